//! The Sluice example filter, in Zig.
//!
//!   [stage.config] pattern = "..."   (required)
//!
//! Rejects a message whose Subject contains `pattern` (case-insensitive substring) with
//! 550 5.7.1; panics on purpose when the Subject contains "please crash", to show the stage's
//! on_error policy; otherwise counts the body bytes without keeping them, logs
//! "zig example: N body bytes" and adds the header "X-Sluice-Example: zig N".
const std = @import("std");
const sluice = @import("sluice.zig");

/// Panics and `std.log` go to the gateway's log.
pub const panic = sluice.panic;
pub const std_options: std.Options = .{ .logFn = sluice.logFn };

const Example = struct {
    /// Owned by the helper: valid for the whole instance.
    pattern: []const u8,
    body_bytes: u64 = 0,

    /// Reads the configuration; runs once at load (to check it) and once per message.
    pub fn init(config: *sluice.Config) !Example {
        const pattern = config.get("pattern") orelse
            return config.refuse("pattern", "missing: set pattern = \"TEXT\" (a Subject containing TEXT is rejected)", .{});
        return .{ .pattern = pattern };
    }

    // The events asked for are the hooks declared: headers, body, end.

    pub fn onHeaders(self: *Example, headers: sluice.Headers, reaction: *sluice.Reaction) !void {
        const subject = headers.get("Subject") orelse return;
        if (std.ascii.indexOfIgnoreCase(subject, self.pattern) != null) {
            return reaction.reject(550, "5.7.1", "Subject contains \"{s}\"", .{self.pattern});
        }
        if (std.mem.indexOf(u8, subject, "please crash") != null) {
            @panic("the Subject asked for a crash"); // a failure of the stage, on purpose
        }
    }

    pub fn onBodyChunk(self: *Example, chunk: []const u8, _: *sluice.Reaction) !void {
        self.body_bytes += chunk.len; // continue, and pass the chunk on unchanged
    }

    pub fn onEnd(self: *Example, reaction: *sluice.Reaction) !void {
        std.log.info("zig example: {d} body bytes", .{self.body_bytes});
        try reaction.addHeader("X-Sluice-Example", "zig {d}", .{self.body_bytes});
    }
};

comptime {
    sluice.exportFilter(Example);
}
