// Development sign-in: paste the token the service printed at start-up (kept for this tab).
import { useId, useState, type FormEvent } from "react";

interface Props {
  reason?: string;
  development: boolean;
  onToken: (token: string) => void;
}

export function SignIn({ reason, development, onToken }: Props) {
  const [value, setValue] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const inputId = useId();
  const helpId = useId();
  const errorId = useId();
  const submit = (event: FormEvent) => {
    event.preventDefault();
    const token = value.trim().replace(/^Bearer\s+/i, "");
    if (token.split(".").length !== 3) {
      setProblem("That is not a token: it has three parts separated by dots.");
      return;
    }
    onToken(token);
  };
  return (
    <main className="signin" id="main">
      <h1>Sign in to your dashboard</h1>
      {reason && (
        <p className="notice notice-warning" role="alert">
          {reason}
        </p>
      )}
      <form onSubmit={submit} noValidate>
        <label htmlFor={inputId}>Access token</label>
        <p id={helpId} className="help">
          {development
            ? "Paste the development token the service printed when it started (export TOKEN=…)."
            : "Paste an access token issued for your account."}{" "}
          It is kept for this browser tab only.
        </p>
        <textarea
          id={inputId}
          rows={4}
          value={value}
          autoComplete="off"
          spellCheck={false}
          aria-describedby={problem ? `${helpId} ${errorId}` : helpId}
          aria-invalid={problem ? true : undefined}
          onChange={(e) => setValue(e.target.value)}
        />
        {problem && (
          <p id={errorId} className="field-error">
            {problem}
          </p>
        )}
        <button type="submit" className="primary">
          Sign in
        </button>
      </form>
    </main>
  );
}
