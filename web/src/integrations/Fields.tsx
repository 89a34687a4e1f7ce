// The catalogue's credential and setting fields as labelled inputs, with their errors.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  InputType,
  SyncDirection,
  type ProviderInfo,
} from "../gen/nexus/integrations/v1/integrations_pb";

export interface FieldSpec {
  /** `credentials.apiKey` or `settings.syncInterval`. */
  name: string;
  key: string;
  label: string;
  inputType: InputType;
  secret: boolean;
  required: boolean;
  help: string;
}

export function credentialFields(provider: ProviderInfo): FieldSpec[] {
  return provider.credentialFields.map((f) => ({
    name: `credentials.${f.key}`,
    key: f.key,
    label: f.label,
    inputType: f.inputType,
    secret: f.secret,
    required: f.required,
    help: f.help,
  }));
}

export function settingFields(provider: ProviderInfo): FieldSpec[] {
  return provider.settingFields.map((f) => ({
    name: `settings.${f.key}`,
    key: f.key,
    label: f.label,
    inputType: f.inputType,
    secret: false,
    required: f.required,
    help: f.help,
  }));
}

export type Values = Record<string, string>;
export type Errors = Record<string, string>;

/** Fields that are required and empty. */
export function missing(fields: FieldSpec[], values: Values): Errors {
  const errors: Errors = {};
  for (const f of fields) {
    if (f.required && !(values[f.name] ?? "").trim()) errors[f.name] = `${f.label} is required.`;
  }
  return errors;
}

/** Picks the values of one group (`credentials` or `settings`), without empty optional ones. */
export function group(fields: FieldSpec[], values: Values): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fields) {
    const value = (values[f.name] ?? "").trim();
    if (value) out[f.key] = value;
  }
  return out;
}

/**
 * Puts a refused call's reason where the user will look: on the field it names
 * (`credentials.apiKey: …`), else on the first secret field for a refused credential,
 * else on the form as a whole (key `form`).
 */
export function placeError(error: unknown, fields: FieldSpec[], explain: (e: unknown) => string): Errors {
  const text = explain(error);
  if (error instanceof ConnectError) {
    const named = /^((?:credentials|settings)\.[A-Za-z]+):\s*(.*)$/.exec(error.rawMessage);
    if (named && fields.some((f) => f.name === named[1])) return { [named[1]]: named[2] };
    const secret = fields.find((f) => f.secret);
    if (error.code === Code.InvalidArgument && secret) return { [secret.name]: error.rawMessage };
  }
  return { form: text };
}

interface Props {
  field: FieldSpec;
  provider: ProviderInfo;
  value: string;
  error?: string;
  onChange: (value: string) => void;
}

export function Field({ field, provider, value, error, onChange }: Props) {
  const id = `${provider.slug}-${field.name}`;
  const helpId = `${id}-help`;
  const errorId = `${id}-error`;
  const described = [field.help ? helpId : "", error ? errorId : ""].filter(Boolean).join(" ") || undefined;
  const common = {
    id,
    name: field.name,
    "aria-describedby": described,
    "aria-invalid": error ? true : undefined,
    required: field.required,
  };
  let input;
  if (field.key === "syncDirection") {
    const canImport = provider.directions.includes(SyncDirection.IMPORT);
    input = (
      <select {...common} value={value || "push"} onChange={(e) => onChange(e.target.value)}>
        <option value="push">Push my contacts to {provider.name}</option>
        {canImport && <option value="import">Import contacts from {provider.name}</option>}
        {canImport && <option value="both">Both ways</option>}
      </select>
    );
  } else {
    const type =
      field.inputType === InputType.PASSWORD || field.secret
        ? "password"
        : field.inputType === InputType.URL
          ? "url"
          : field.inputType === InputType.NUMBER
            ? "number"
            : "text";
    input = (
      <input
        {...common}
        type={type}
        value={value}
        min={type === "number" ? 0 : undefined}
        autoComplete={type === "password" ? "new-password" : "off"}
        spellCheck={false}
        onChange={(e) => onChange(e.target.value)}
      />
    );
  }
  return (
    <div className="field">
      <label htmlFor={id}>
        {field.label}
        {field.required && <span aria-hidden="true"> *</span>}
      </label>
      {input}
      {field.help && (
        <p id={helpId} className="help">
          {field.help}
        </p>
      )}
      {error && (
        <p id={errorId} className="field-error" data-testid="field-error">
          {error}
        </p>
      )}
    </div>
  );
}

interface ListProps {
  fields: FieldSpec[];
  provider: ProviderInfo;
  values: Values;
  errors: Errors;
  onChange: (update: (values: Values) => Values) => void;
}

/** A form's error as a whole, then one input per field. */
export function FieldList({ fields, provider, values, errors, onChange }: ListProps) {
  return (
    <>
      {errors.form && (
        <p className="notice notice-error" role="alert">
          {errors.form}
        </p>
      )}
      {fields.map((field) => (
        <Field
          key={field.name}
          field={field}
          provider={provider}
          value={values[field.name] ?? ""}
          error={errors[field.name]}
          onChange={(value) => onChange((all) => ({ ...all, [field.name]: value }))}
        />
      ))}
    </>
  );
}
