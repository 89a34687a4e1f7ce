// What every page gets: the clients, and one way to handle a failed call.
import { createContext, useContext } from "react";
import { describe, isUnauthenticated, type Api } from "./api";

export interface Session {
  api: Api;
  /** The token was refused: back to sign-in, saying why. */
  expired: () => void;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session & { explain: (error: unknown) => string } {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside a signed-in page");
  return {
    ...session,
    explain: (error: unknown) => {
      if (isUnauthenticated(error)) session.expired();
      return describe(error);
    },
  };
}

/** In-app navigation without a reload. */
export function navigate(path: string) {
  window.history.pushState(null, "", path);
  window.dispatchEvent(new PopStateEvent("popstate"));
}
