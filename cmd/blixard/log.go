package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/pflag"
)

// logOptions are the logging flags of the daemon commands.
type logOptions struct {
	format string
	level  string
}

func (o *logOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.format, "log-format", "text", "log `FORMAT` on stderr: text or json")
	fs.StringVar(&o.level, "log-level", "info", "least severe `LEVEL` logged: debug, info, warn or error")
}

func (o *logOptions) slogLevel() (slog.Level, bool) {
	switch strings.ToLower(o.level) {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn", "warning":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

func (o *logOptions) validate() error {
	switch o.format {
	case "text", "json":
	default:
		return usageError(fmt.Sprintf(`--log-format must be "text" or "json" (got %q)`, o.format),
			"pass --log-format text or --log-format json")
	}
	if _, ok := o.slogLevel(); !ok {
		return usageError(fmt.Sprintf("--log-level must be debug, info, warn or error (got %q)", o.level),
			"pass e.g. --log-level info")
	}
	return nil
}

// logger returns a logger writing to w; call validate first.
func (o *logOptions) logger(w io.Writer) *slog.Logger {
	level, _ := o.slogLevel()
	opts := &slog.HandlerOptions{Level: level}
	if o.format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
