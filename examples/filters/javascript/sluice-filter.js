// Write Sluice mail filters in JavaScript (contract sluice:filter@0.2.2, world `filter`).
//
// Extend `Filter`, override the hooks you need, and export the class with one line:
//
//     import { Filter, Reaction, reject, exportFilter } from "./sluice-filter.js";
//
//     class NoWord extends Filter {
//       static wants = ["headers"];
//       constructor(config) {
//         super(config);
//         this.word = config.require("word");
//       }
//       onHeaders(headers) {
//         if ((headers.get("Subject") ?? "").includes(this.word)) {
//           return reject(550, "5.7.1", `No ${this.word} here`);
//         }
//         return new Reaction().addHeader("X-No-Word", "checked");
//       }
//     }
//
//     export const handler = exportFilter(NoWord);
//
// Each message gets a fresh instance of your class (built from the stage's configuration), so
// keep per-message state on `this`. Every hook defaults to "continue, no changes"; a hook may
// return a `Reaction`, a verdict (`CONTINUE`, `ACCEPT`, `DISCARD`, `reject(...)`,
// `tempfail(...)`) or nothing (continue). An exception escaping a hook is a failure of the
// stage: the host discards the instance and applies the stage's `on_error` policy.
//
// This module is the only place that touches the contract's raw types (WIT variants as
// `{ tag, val }` objects, flags as objects of booleans); filter code never sees them.

import * as host from "sluice:filter/host@0.2.2";
import * as files from "sluice:filter/files@0.2.2";
import * as raw from "sluice:filter/raw@0.2.2";

// ---------------------------------------------------------------------------------------------
// Verdicts

/** Go on: call me with the next event. */
export const CONTINUE = Object.freeze({ tag: "continue" });
/** I am done with this message: stop calling me, pass it on. */
export const ACCEPT = Object.freeze({ tag: "accept" });
/** Tell the client 250, then drop the message. */
export const DISCARD = Object.freeze({ tag: "discard" });

/** Refuse permanently: `reject(550, "5.7.1", "No thanks")` (code 5xx, enhanced "5.x.y"). */
export function reject(code, enhanced, text) {
  return { tag: "reject", val: { code, enhanced, text: String(text) } };
}

/** Refuse for now: `tempfail(451, "4.7.1", "Try later")` (code 4xx, enhanced "4.x.y"). */
export function tempfail(code, enhanced, text) {
  return { tag: "tempfail", val: { code, enhanced, text: String(text) } };
}

const VERDICT_TAGS = new Set(["continue", "accept", "reject", "tempfail", "discard"]);
const isVerdict = (value) => value !== null && typeof value === "object" && VERDICT_TAGS.has(value.tag);

// ---------------------------------------------------------------------------------------------
// Reactions (answers to onHeaders, onBodyChunk, onEnd)

/**
 * A verdict, header changes and what becomes of the body. The builder methods return the
 * reaction itself, so they chain: `new Reaction().addHeader("X-Seen", "yes")`.
 */
export class Reaction {
  constructor(verdict = CONTINUE) {
    this.verdict = verdict;
    this.headerChanges = [];
    this.body = null; // null: pass the body on unchanged (or nothing to add)
  }

  /** Append a field at the end of the header section. */
  addHeader(name, value) {
    this.headerChanges.push({ tag: "add", val: { name, value: String(value) } });
    return this;
  }

  /** Insert a field at the top (trace fields: Received, signatures, results). */
  prependHeader(name, value) {
    this.headerChanges.push({ tag: "prepend", val: { name, value: String(value) } });
    return this;
  }

  /** Give the `index`-th field named `name` (from 1) this value; added if absent. */
  changeHeader(name, value, index = 1) {
    this.headerChanges.push({ tag: "change", val: { name, index, value: String(value) } });
    return this;
  }

  /** Remove the `index`-th field named `name` (from 1), or every one (index 0). */
  removeHeader(name, index = 0) {
    this.headerChanges.push({ tag: "remove", val: { name, index } });
    return this;
  }

  /**
   * onBodyChunk: pass these chunks (Uint8Array or string, UTF-8) on instead of the chunk (`[]`
   * drops it). onEnd: append them after the last body byte. Lines end with CRLF.
   */
  replaceBody(chunks) {
    const encoder = new TextEncoder();
    this.body = chunks.map((chunk) => (typeof chunk === "string" ? encoder.encode(chunk) : chunk));
    return this;
  }
}

const PASS = Object.freeze({ tag: "pass" });

function toReaction(answer, hook) {
  if (answer === undefined || answer === null) {
    return { verdict: CONTINUE, headerChanges: [], body: PASS };
  }
  if (answer instanceof Reaction) {
    const body = answer.body === null ? PASS : { tag: "replace", val: answer.body };
    return { verdict: answer.verdict, headerChanges: answer.headerChanges, body };
  }
  if (isVerdict(answer)) {
    return { verdict: answer, headerChanges: [], body: PASS };
  }
  throw new TypeError(`${hook} must return a Reaction, a verdict or nothing, not ${JSON.stringify(answer)}`);
}

function toVerdict(answer, hook) {
  if (answer === undefined || answer === null) return CONTINUE;
  if (isVerdict(answer)) return answer;
  throw new TypeError(`${hook} must return a verdict or nothing, not ${JSON.stringify(answer)}`);
}

// ---------------------------------------------------------------------------------------------
// Headers

/**
 * The header section: fields in message order, values unfolded and trimmed. Iterating gives
 * `[name, value]` pairs; `get` and `all` compare names case-insensitively.
 */
export class Headers {
  constructor(fields) {
    this.fields = fields.map(({ name, value }) => [name, value]);
  }

  /** The value of the first field called `name`, or undefined. */
  get(name) {
    const wanted = name.toLowerCase();
    const field = this.fields.find(([key]) => key.toLowerCase() === wanted);
    return field?.[1];
  }

  /** The values of every field called `name`, in order. */
  all(name) {
    const wanted = name.toLowerCase();
    return this.fields.filter(([key]) => key.toLowerCase() === wanted).map(([, value]) => value);
  }

  /** The header section as bytes, exactly as this stage was given it (folding, CRLFs). */
  rawSection() {
    return raw.headerSection();
  }

  get length() {
    return this.fields.length;
  }

  [Symbol.iterator]() {
    return this.fields[Symbol.iterator]();
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/**
 * A configuration the filter refuses: names the [stage.config] key (`files.NAME` for a
 * [stage.files] entry, "" for none) and says what is wrong, in one line.
 */
export class ConfigError extends Error {
  constructor(key, message) {
    super(key ? `${key}: ${message}` : message);
    this.name = "ConfigError";
    this.key = key;
    this.problem = message;
  }
}

/**
 * The stage's [stage.config] table (string values, file order). Remembers which keys were
 * read, so keys the filter never looks at are reported to the operator as unknown.
 */
export class Config {
  constructor(pairs) {
    this.entries = pairs.map(([key, value]) => [key, value]);
    this.read = new Set();
  }

  static fromHost() {
    return new Config(host.config());
  }

  /** The value of `key`, or `fallback` when absent. */
  get(key, fallback = undefined) {
    const entry = this.entries.find(([name]) => name === key);
    if (!entry) return fallback;
    this.read.add(key);
    return entry[1];
  }

  /** The value of `key`; a ConfigError naming it when absent. */
  require(key, what = undefined) {
    const value = this.get(key);
    if (value === undefined) throw new ConfigError(key, what ? `is required: ${what}` : "is required");
    return value;
  }

  /** Every [key, value], in file order (all count as read). */
  pairs() {
    for (const [key] of this.entries) this.read.add(key);
    return this.entries.map(([key, value]) => [key, value]);
  }

  /** Keys never read, in file order. */
  unreadKeys() {
    return this.entries.map(([key]) => key).filter((key) => !this.read.has(key));
  }

  /** The bytes (Uint8Array) of the [stage.files] entry `name`, or undefined. */
  file(name) {
    return files.file(name);
  }

  /** The bytes of the [stage.files] entry `name`; a ConfigError naming it when absent. */
  requireFile(name) {
    const bytes = this.file(name);
    if (bytes === undefined) throw new ConfigError(`files.${name}`, "is required: add it to [stage.files]");
    return bytes;
  }
}

// ---------------------------------------------------------------------------------------------
// Logging (the gateway's log, subsystem `filters`, with the stage and session attached)

const LEVELS = new Set(["trace", "debug", "info", "warn", "error"]);

/** `level` is one of "trace", "debug", "info", "warn", "error". */
export function log(level, message) {
  if (!LEVELS.has(level)) throw new TypeError(`unknown log level ${JSON.stringify(level)}`);
  host.log(level, String(message));
}

export const debug = (message) => log("debug", message);
export const info = (message) => log("info", message);
export const warn = (message) => log("warn", message);
export const error = (message) => log("error", message);

// ---------------------------------------------------------------------------------------------
// The filter

/** Every event name `Filter.wants` may list (the contract's `interests` flags). */
export const EVENTS = Object.freeze(["connect", "helo", "mailFrom", "rcptTo", "headers", "body", "end"]);

/** Base class of a filter: one instance per message, every hook "continue" by default. */
export class Filter {
  /**
   * The events to be called for (a subset of EVENTS). Leave out "body" if you never look at
   * it: the host then does not copy the body into the filter.
   */
  static wants = EVENTS;

  /**
   * Read the configuration here (`config.require("key")`, `config.get("key", fallback)`); throw
   * a ConfigError for one you cannot work with. The host also builds one instance when it
   * loads the filter, so the operator sees the error at start or reload.
   */
  constructor(config) {} // eslint-disable-line no-unused-vars

  /** The client's address, `ip:port`. Return a verdict or nothing. */
  onConnect(peer) {} // eslint-disable-line no-unused-vars
  /** The HELO/EHLO name. */
  onHelo(name) {} // eslint-disable-line no-unused-vars
  /** The sender without angle brackets; "" for the null sender. */
  onMailFrom(address) {} // eslint-disable-line no-unused-vars
  /** One recipient; a reject or tempfail refuses only this recipient. */
  onRcptTo(address) {} // eslint-disable-line no-unused-vars
  /** The complete header section (Headers). Return a Reaction, a verdict or nothing. */
  onHeaders(headers) {} // eslint-disable-line no-unused-vars
  /** The next piece of the body (Uint8Array, CRLF line endings, not aligned to lines). */
  onBodyChunk(chunk) {} // eslint-disable-line no-unused-vars
  /** End of data: last chance to decide, change headers or append to the body. */
  onEnd() {}
}

function interests(FilterClass) {
  const unknown = FilterClass.wants.filter((event) => !EVENTS.includes(event));
  if (unknown.length) throw new TypeError(`${FilterClass.name}.wants: unknown events ${unknown.join(", ")}`);
  return Object.fromEntries(EVENTS.map((event) => [event, FilterClass.wants.includes(event)]));
}

/**
 * Makes `FilterClass` (a subclass of Filter) the component's implementation of the contract's
 * `handler` interface. Export the result as `handler` from the module you componentize:
 *
 *     export const handler = exportFilter(MyFilter);
 */
export function exportFilter(FilterClass) {
  if (!(FilterClass.prototype instanceof Filter)) {
    throw new TypeError("exportFilter() takes a subclass of Filter");
  }
  interests(FilterClass); // a typo in `wants` fails the build, not the first message

  class Message {
    constructor() {
      try {
        this.filter = new FilterClass(Config.fromHost());
      } catch (err) {
        // validate-config accepted this configuration at load, so only a filter whose
        // constructor depends on more than its configuration gets here: a stage failure.
        if (err instanceof ConfigError) error(err.message);
        throw err;
      }
    }
    onConnect(peer) {
      return toVerdict(this.filter.onConnect(peer), "onConnect");
    }
    onHelo(name) {
      return toVerdict(this.filter.onHelo(name), "onHelo");
    }
    onMailFrom(address) {
      return toVerdict(this.filter.onMailFrom(address), "onMailFrom");
    }
    onRcptTo(address) {
      return toVerdict(this.filter.onRcptTo(address), "onRcptTo");
    }
    onHeaders(headers) {
      return toReaction(this.filter.onHeaders(new Headers(headers)), "onHeaders");
    }
    onBodyChunk(chunk) {
      return toReaction(this.filter.onBodyChunk(chunk), "onBodyChunk");
    }
    onEnd() {
      return toReaction(this.filter.onEnd(), "onEnd");
    }
  }

  return {
    validateConfig() {
      const config = Config.fromHost();
      try {
        new FilterClass(config);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        // A thrown object with a `payload` is the `err` case of the contract's result.
        throw { payload: { key: err.key, message: err.problem } };
      }
      return { unusedKeys: config.unreadKeys() };
    },
    wants() {
      return interests(FilterClass);
    },
    Message,
  };
}
