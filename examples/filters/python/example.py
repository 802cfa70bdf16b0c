"""The Sluice example filter, in Python.

Refuses a message whose Subject contains the configured `pattern` (case-insensitive substring),
fails on purpose when the Subject says "please crash" (a demo of the stage's on_error policy),
counts the body bytes without keeping them, and tags every message it lets through with
`X-Sluice-Example: python N`.
"""

from sluice_filter import Filter, Reaction, export, info, reject


class Example(Filter):
    wants = {"headers", "body", "end"}

    def __init__(self, config):
        # The host builds one instance at load (validate-config): a missing key is refused there,
        # and every key not read here is reported to the operator as unknown.
        self.pattern = config.require("pattern", "the text to refuse in the Subject")
        self.body_bytes = 0

    def on_headers(self, headers):
        subject = headers.get("Subject", "")
        if self.pattern.lower() in subject.lower():
            return reject(550, "5.7.1", f'Subject contains "{self.pattern}"')
        if "please crash" in subject:
            raise RuntimeError("asked to crash by the Subject")
        return None  # continue

    def on_body_chunk(self, chunk):
        self.body_bytes += len(chunk)  # count, never keep: the body may be large
        return None  # continue, pass the chunk on unchanged

    def on_end(self):
        info(f"python example: {self.body_bytes} body bytes")
        return Reaction().add_header("X-Sluice-Example", f"python {self.body_bytes}")


Handler = export(Example)
