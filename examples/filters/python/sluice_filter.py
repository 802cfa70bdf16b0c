"""Write Sluice mail filters in Python (contract ``sluice:filter@0.2.2``, world ``filter``).

Subclass :class:`Filter`, override the hooks you need, and export the class with one line::

    from sluice_filter import Filter, Reaction, reject, export

    class NoWord(Filter):
        wants = {"headers"}

        def __init__(self, config):
            self.word = config.require("word")

        def on_headers(self, headers):
            if self.word in (headers.get("Subject") or ""):
                return reject(550, "5.7.1", f"No {self.word} here")
            return Reaction().add_header("X-No-Word", "checked")

    Handler = export(NoWord)

Each message gets a fresh instance of your class (built from the stage's configuration), so keep
per-message state on ``self``. Every hook defaults to "continue, no changes"; a hook may return
a :class:`Reaction`, a verdict (``CONTINUE``, ``ACCEPT``, ``DISCARD``, ``reject(...)``,
``tempfail(...)``) or ``None`` (continue). An exception escaping a hook is a failure of the
stage: the host discards the instance and applies the stage's ``on_error`` policy.

This module is the only place that touches the bindings componentize-py generates
(``wit_world``); filter code never sees them.
"""

import sys
import types as _pytypes

from componentize_py_types import Err
from wit_world.imports import files as _files
from wit_world.imports import host as _host
from wit_world.imports import raw as _raw
from wit_world.imports import types as _wit

__all__ = [
    "ACCEPT", "CONTINUE", "DISCARD", "EVENTS", "Config", "ConfigError", "Filter", "Headers",
    "Reaction", "debug", "error", "export", "info", "log", "reject", "tempfail", "warn",
]

# ---------------------------------------------------------------------------------------------
# Verdicts

CONTINUE = _wit.Verdict_Continue()
"""Go on: call me with the next event."""
ACCEPT = _wit.Verdict_Accept()
"""I am done with this message: stop calling me, pass it on."""
DISCARD = _wit.Verdict_Discard()
"""Tell the client 250, then drop the message."""


def reject(code, enhanced, text):
    """Refuse permanently: ``reject(550, "5.7.1", "No thanks")`` (code 5xx, enhanced "5.x.y")."""
    return _wit.Verdict_Reject(_wit.SmtpReply(code=code, enhanced=enhanced, text=str(text)))


def tempfail(code, enhanced, text):
    """Refuse for now: ``tempfail(451, "4.7.1", "Try later")`` (code 4xx, enhanced "4.x.y")."""
    return _wit.Verdict_Tempfail(_wit.SmtpReply(code=code, enhanced=enhanced, text=str(text)))


_VERDICTS = (_wit.Verdict_Continue, _wit.Verdict_Accept, _wit.Verdict_Reject,
             _wit.Verdict_Tempfail, _wit.Verdict_Discard)

# ---------------------------------------------------------------------------------------------
# Reactions (answers to on_headers, on_body_chunk, on_end)


class Reaction:
    """A verdict, header changes and what becomes of the body. The builder methods return the
    reaction itself, so they chain: ``Reaction().add_header("X-Seen", "yes")``."""

    def __init__(self, verdict=CONTINUE):
        self.verdict = verdict
        self.header_changes = []
        self.body = None  # None: pass the body on unchanged (or nothing to add)

    def add_header(self, name, value):
        """Append a field at the end of the header section."""
        self.header_changes.append(_wit.HeaderChange_Add(_wit.Header(name=name, value=str(value))))
        return self

    def prepend_header(self, name, value):
        """Insert a field at the top (trace fields: Received, signatures, results)."""
        self.header_changes.append(
            _wit.HeaderChange_Prepend(_wit.Header(name=name, value=str(value))))
        return self

    def change_header(self, name, value, index=1):
        """Give the ``index``-th field named ``name`` (from 1) this value; added if absent."""
        self.header_changes.append(
            _wit.HeaderChange_Change(_wit.HeaderAt(name=name, index=index, value=str(value))))
        return self

    def remove_header(self, name, index=0):
        """Remove the ``index``-th field named ``name`` (from 1), or every one (index 0)."""
        self.header_changes.append(
            _wit.HeaderChange_Remove(_wit.HeaderNameAt(name=name, index=index)))
        return self

    def replace_body(self, chunks):
        """``on_body_chunk``: pass these byte strings on instead of the chunk (``[]`` drops it).
        ``on_end``: append them after the last body byte. Lines end with CRLF."""
        self.body = [bytes(chunk) for chunk in chunks]
        return self

    def _to_wit(self):
        body = _wit.BodyOutput_Pass() if self.body is None else _wit.BodyOutput_Replace(self.body)
        return _wit.Reaction(verdict=self.verdict, header_changes=self.header_changes, body=body)


def _reaction(answer, hook):
    if answer is None:
        return _wit.Reaction(verdict=CONTINUE, header_changes=[], body=_wit.BodyOutput_Pass())
    if isinstance(answer, Reaction):
        return answer._to_wit()
    if isinstance(answer, _VERDICTS):
        return _wit.Reaction(verdict=answer, header_changes=[], body=_wit.BodyOutput_Pass())
    raise TypeError(f"{hook} must return a Reaction, a verdict or None, not {answer!r}")


def _verdict(answer, hook):
    if answer is None:
        return CONTINUE
    if isinstance(answer, _VERDICTS):
        return answer
    raise TypeError(f"{hook} must return a verdict or None, not {answer!r}")

# ---------------------------------------------------------------------------------------------
# Headers


class Headers:
    """The header section: fields in message order, values unfolded and trimmed. Iterating
    gives ``(name, value)`` pairs; names compare case-insensitively in ``get`` and ``all``."""

    def __init__(self, fields):
        self._fields = [(field.name, field.value) for field in fields]

    def get(self, name, default=None):
        """The value of the first field called ``name``, or ``default``."""
        wanted = name.lower()
        for key, value in self._fields:
            if key.lower() == wanted:
                return value
        return default

    def all(self, name):
        """The values of every field called ``name``, in order."""
        wanted = name.lower()
        return [value for key, value in self._fields if key.lower() == wanted]

    def raw_section(self):
        """The header section as bytes, exactly as this stage was given it (folding, CRLFs)."""
        return _raw.header_section()

    def __iter__(self):
        return iter(self._fields)

    def __len__(self):
        return len(self._fields)

# ---------------------------------------------------------------------------------------------
# Configuration


class ConfigError(Exception):
    """A configuration the filter refuses: names the ``[stage.config]`` key (``files.NAME`` for
    a ``[stage.files]`` entry, empty for none) and says what is wrong, in one line."""

    def __init__(self, key, message):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class Config:
    """The stage's ``[stage.config]`` table (string values, file order). Remembers which keys
    were read, so keys the filter never looks at are reported to the operator as unknown."""

    def __init__(self, pairs):
        self._pairs = list(pairs)
        self._read = set()

    @classmethod
    def from_host(cls):
        return cls(_host.config())

    def get(self, key, default=None):
        """The value of ``key``, or ``default`` when absent."""
        for name, value in self._pairs:
            if name == key:
                self._read.add(key)
                return value
        return default

    def require(self, key, what=None):
        """The value of ``key``; a :class:`ConfigError` naming it when absent."""
        value = self.get(key)
        if value is None:
            raise ConfigError(key, f"is required: {what}" if what else "is required")
        return value

    def pairs(self):
        """Every ``(key, value)``, in file order (all count as read)."""
        self._read.update(name for name, _ in self._pairs)
        return list(self._pairs)

    def unread_keys(self):
        """Keys never read, in file order."""
        return [name for name, _ in self._pairs if name not in self._read]

    def file(self, name):
        """The bytes of the ``[stage.files]`` entry ``name``, or ``None``."""
        return _files.file(name)

    def require_file(self, name):
        """The bytes of the ``[stage.files]`` entry ``name``; a :class:`ConfigError` if absent."""
        data = self.file(name)
        if data is None:
            raise ConfigError(f"files.{name}", "is required: add it to [stage.files]")
        return data

# ---------------------------------------------------------------------------------------------
# Logging (the gateway's log, subsystem `filters`, with the stage and session attached)


def log(level, message):
    """``level`` is one of "trace", "debug", "info", "warn", "error"."""
    _host.log(_LEVELS[level], str(message))


def debug(message):
    log("debug", message)


def info(message):
    log("info", message)


def warn(message):
    log("warn", message)


def error(message):
    log("error", message)


_LEVELS = {
    "trace": _host.Level.TRACE, "debug": _host.Level.DEBUG, "info": _host.Level.INFO,
    "warn": _host.Level.WARN, "error": _host.Level.ERROR,
}

# ---------------------------------------------------------------------------------------------
# The filter


_INTERESTS = {
    "connect": _wit.Interests.CONNECT, "helo": _wit.Interests.HELO,
    "mail_from": _wit.Interests.MAIL_FROM, "rcpt_to": _wit.Interests.RCPT_TO,
    "headers": _wit.Interests.HEADERS, "body": _wit.Interests.BODY, "end": _wit.Interests.END,
}
EVENTS = frozenset(_INTERESTS)
"""Every event name ``Filter.wants`` may list."""


class Filter:
    """Base class of a filter: one instance per message, every hook "continue" by default."""

    wants = EVENTS
    """The events to be called for (a subset of ``EVENTS``). Leave out "body" if you never look
    at it: the host then does not copy the body into the filter."""

    def __init__(self, config):
        """Read the configuration here (``config.require("key")``, ``config.get("key", dflt)``);
        raise :class:`ConfigError` for one you cannot work with. The host also builds one
        instance when it loads the filter, so the operator sees the error at start or reload."""

    def on_connect(self, peer):
        """The client's address, ``ip:port``. Return a verdict or None."""

    def on_helo(self, name):
        """The HELO/EHLO name."""

    def on_mail_from(self, address):
        """The sender without angle brackets; empty for the null sender."""

    def on_rcpt_to(self, address):
        """One recipient; a reject or tempfail refuses only this recipient."""

    def on_headers(self, headers):
        """The complete header section (:class:`Headers`). Return a Reaction, verdict or None."""

    def on_body_chunk(self, chunk):
        """The next piece of the body (``bytes``, CRLF line endings, not aligned to lines)."""

    def on_end(self):
        """End of data: last chance to decide, change headers or append to the body."""


def _interests(filter_class):
    unknown = set(filter_class.wants) - EVENTS
    if unknown:
        raise ValueError(f"{filter_class.__name__}.wants: unknown events {sorted(unknown)}")
    flags = _wit.Interests(0)
    for event in filter_class.wants:
        flags |= _INTERESTS[event]
    return flags


def export(filter_class):
    """Makes ``filter_class`` (a :class:`Filter` subclass) the component's implementation.
    Assign the result to ``Handler`` in the module you give componentize-py::

        Handler = export(MyFilter)
    """
    if not (isinstance(filter_class, type) and issubclass(filter_class, Filter)):
        raise TypeError("export() takes a subclass of sluice_filter.Filter")
    _interests(filter_class)  # a typo in `wants` fails the build, not the first message

    class Handler:
        def validate_config(self):
            config = Config.from_host()
            try:
                filter_class(config)
            except ConfigError as err:
                raise Err(_wit.ConfigProblem(key=err.key, message=err.message))
            return _wit.ConfigReport(unused_keys=config.unread_keys())

        def wants(self):
            return _interests(filter_class)

    class Message:
        def __init__(self):
            try:
                self._filter = filter_class(Config.from_host())
            except ConfigError as err:
                # validate-config accepted this configuration at load, so only a filter whose
                # __init__ depends on more than its configuration gets here: a stage failure.
                error(str(err))
                raise

        def on_connect(self, peer):
            return _verdict(self._filter.on_connect(peer), "on_connect")

        def on_helo(self, name):
            return _verdict(self._filter.on_helo(name), "on_helo")

        def on_mail_from(self, address):
            return _verdict(self._filter.on_mail_from(address), "on_mail_from")

        def on_rcpt_to(self, address):
            return _verdict(self._filter.on_rcpt_to(address), "on_rcpt_to")

        def on_headers(self, headers):
            return _reaction(self._filter.on_headers(Headers(headers)), "on_headers")

        def on_body_chunk(self, chunk):
            return _reaction(self._filter.on_body_chunk(chunk), "on_body_chunk")

        def on_end(self):
            return _reaction(self._filter.on_end(), "on_end")

    # componentize-py looks up the exported `handler` interface's `message` resource as the
    # class `Message` of a module named `handler`.
    module = _pytypes.ModuleType("handler")
    module.Message = Message
    sys.modules["handler"] = module
    return Handler
