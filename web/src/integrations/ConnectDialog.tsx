// Connecting a provider: its credential fields (secrets as password inputs) and settings, or a
// "Connect with <provider>" button that goes through the browser-bound OAuth flow.
import { useState, type FormEvent } from "react";
import { AuthKind, type ProviderInfo } from "../gen/nexus/integrations/v1/integrations_pb";
import { Modal } from "../components/Modal";
import { useSession } from "../context";
import { INTEGRATIONS_PATH } from "../paths";
import { credentialFields, FieldList, group, missing, placeError, settingFields, type Errors, type Values } from "./Fields";

interface Props {
  provider: ProviderInfo;
  onClose: () => void;
  onConnected: () => void;
}

export function ConnectDialog({ provider, onClose, onConnected }: Props) {
  const { api, explain } = useSession();
  const oauth = provider.authKind === AuthKind.OAUTH2;
  const fields = [...(oauth ? [] : credentialFields(provider)), ...settingFields(provider)];
  const [values, setValues] = useState<Values>({});
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const problems = missing(fields, values);
    setErrors(problems);
    if (Object.keys(problems).length > 0) {
      document.getElementById(`${provider.slug}-${Object.keys(problems)[0]}`)?.focus();
      return;
    }
    setBusy(true);
    try {
      const settings = group(settingFields(provider), values);
      if (oauth) {
        const started = await api.integrations.startOAuth({
          provider: provider.provider,
          redirectAfter: `${window.location.origin}${INTEGRATIONS_PATH}`,
          settings,
        });
        window.location.assign(await api.beginOAuth(started.authorizationUrl));
        return;
      }
      await api.integrations.connectIntegration({
        provider: provider.provider,
        credentials: group(credentialFields(provider), values),
        settings,
      });
      onConnected();
    } catch (e) {
      const placed = placeError(e, fields, explain);
      setErrors(placed);
      const first = Object.keys(placed)[0];
      if (first !== "form") document.getElementById(`${provider.slug}-${first}`)?.focus();
    }
    setBusy(false);
  };

  return (
    <Modal title={`Connect ${provider.name}`} onClose={onClose}>
      <form onSubmit={submit} noValidate>
        <FieldList fields={fields} provider={provider} values={values} errors={errors} onChange={setValues} />
        {oauth && (
          <p className="help">You will sign in at {provider.name} and come back here.</p>
        )}
        <div className="modal-actions">
          <button type="button" onClick={onClose} disabled={busy}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Connecting…" : oauth ? `Connect with ${provider.name}` : "Connect"}
          </button>
        </div>
        {busy && (
          <p className="visually-hidden" role="status">
            Checking the credentials with {provider.name}…
          </p>
        )}
      </form>
    </Modal>
  );
}
