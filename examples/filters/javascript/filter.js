// The Sluice example filter, in JavaScript.
//
// Refuses a message whose Subject contains the configured `pattern` (case-insensitive
// substring), fails on purpose when the Subject says "please crash" (a demo of the stage's
// on_error policy), counts the body bytes without keeping them, and tags every message it lets
// through with `X-Sluice-Example: javascript N`.

import { Filter, Reaction, exportFilter, info, reject } from "./sluice-filter.js";

class Example extends Filter {
  static wants = ["headers", "body", "end"];

  constructor(config) {
    super(config);
    // The host builds one instance at load (validate-config): a missing key is refused there,
    // and every key not read here is reported to the operator as unknown.
    this.pattern = config.require("pattern", "the text to refuse in the Subject");
    this.bodyBytes = 0;
  }

  onHeaders(headers) {
    const subject = headers.get("Subject") ?? "";
    if (subject.toLowerCase().includes(this.pattern.toLowerCase())) {
      return reject(550, "5.7.1", `Subject contains "${this.pattern}"`);
    }
    if (subject.includes("please crash")) {
      throw new Error("asked to crash by the Subject");
    }
    // nothing returned: continue
  }

  onBodyChunk(chunk) {
    this.bodyBytes += chunk.length; // count, never keep: the body may be large
    // nothing returned: continue, pass the chunk on unchanged
  }

  onEnd() {
    info(`javascript example: ${this.bodyBytes} body bytes`);
    return new Reaction().addHeader("X-Sluice-Example", `javascript ${this.bodyBytes}`);
  }
}

export const handler = exportFilter(Example);
