// A failed load: what happened, and a way to try again.
export function ErrorPanel({
  title,
  message,
  onRetry,
  compact,
}: {
  title?: string;
  message: string;
  onRetry: () => void;
  compact?: boolean;
}) {
  return (
    <section className={compact ? "notice notice-error" : "error-panel"} role="alert">
      {title && <h1>{title}</h1>}
      <p>{message}</p>
      <button type="button" onClick={onRetry}>
        Try again
      </button>
    </section>
  );
}
