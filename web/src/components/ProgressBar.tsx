// A labelled progress bar: the native element carries the value for assistive technology.
import { useId } from "react";

interface Props {
  label: string;
  value: number;
  max: number;
  /** Text beside the label, e.g. "3 of 10". */
  detail: string;
  unlimited?: boolean;
}

export function ProgressBar({ label, value, max, detail, unlimited }: Props) {
  const id = useId();
  const ratio = unlimited || max <= 0 ? 0 : Math.min(1, value / max);
  const tone = ratio >= 1 ? "full" : ratio >= 0.8 ? "high" : "ok";
  return (
    <div className="progress">
      <div className="progress-label">
        <label htmlFor={id}>{label}</label>
        <span>{detail}</span>
      </div>
      <progress id={id} className={`progress-${tone}`} value={unlimited ? 0 : Math.min(value, max)} max={unlimited ? 1 : Math.max(max, 1)} aria-valuetext={detail} />
    </div>
  );
}
