// Changing an integration's settings without reconnecting (UpdateIntegration).
import { useState, type FormEvent } from "react";
import type { Integration, ProviderInfo } from "../gen/nexus/integrations/v1/integrations_pb";
import { Modal } from "../components/Modal";
import { useSession } from "../context";
import { FieldList, group, missing, placeError, settingFields, type Errors, type Values } from "./Fields";

interface Props {
  provider: ProviderInfo;
  integration: Integration;
  onClose: () => void;
  onSaved: () => void;
}

export function SettingsDialog({ provider, integration, onClose, onSaved }: Props) {
  const { api, explain } = useSession();
  const fields = settingFields(provider);
  const [values, setValues] = useState<Values>(() =>
    Object.fromEntries(fields.map((f) => [f.name, integration.settings[f.key] ?? ""])),
  );
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const problems = missing(fields, values);
    setErrors(problems);
    if (Object.keys(problems).length > 0) return;
    setBusy(true);
    try {
      // The settings are replaced whole: an emptied interval is left out, meaning "manual syncs only".
      const settings = group(fields, values);
      await api.integrations.updateIntegration({ provider: provider.provider, settings });
      onSaved();
    } catch (e) {
      setErrors(placeError(e, fields, explain));
    }
    setBusy(false);
  };

  return (
    <Modal title={`${provider.name} settings`} onClose={onClose}>
      <form onSubmit={submit} noValidate>
        <FieldList fields={fields} provider={provider} values={values} errors={errors} onChange={setValues} />
        <div className="modal-actions">
          <button type="button" onClick={onClose} disabled={busy}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Saving…" : "Save"}
          </button>
        </div>
      </form>
    </Modal>
  );
}
