import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { loadConfig } from "./api";
import { App } from "./App";
import "./styles.css";

const root = createRoot(document.getElementById("root")!);
loadConfig()
  .then((config) =>
    root.render(
      <StrictMode>
        <App config={config} />
      </StrictMode>,
    ),
  )
  .catch((error: unknown) =>
    root.render(
      <main className="signin">
        <h1>The dashboard cannot start</h1>
        <p role="alert">Its settings could not be loaded ({String(error)}). Reload the page to try again.</p>
      </main>,
    ),
  );
