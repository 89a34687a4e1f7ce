// A coloured status label; the colour is never the only signal (the text says it too).
export type Tone = "green" | "blue" | "amber" | "red" | "grey";

export function Badge({ tone, children, title }: { tone: Tone; children: string; title?: string }) {
  return (
    <span className={`badge badge-${tone}`} title={title}>
      {children}
    </span>
  );
}
