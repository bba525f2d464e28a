package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/notify"
)

// notifyTestTimeout bounds guard notify-test: every sender's attempts and
// pauses fit in it with the defaults.
const notifyTestTimeout = 2 * time.Minute

// cmdNotifyTest sends one sample message through each configured sender,
// whatever its min_severity, and says what came of each.
func cmdNotifyTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("notify-test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", installedConfig, "configuration file (TOML)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "notify-test: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, ok := configOrSay(*path, stderr)
	if !ok {
		return 1
	}
	if !cfg.Notify.Enabled() {
		fmt.Fprintf(stderr, "notify-test: %s: no sender is configured: set notify.webhook.url, notify.alertmanager.url or notify.email.server\n", *path)
		return 1
	}
	n, err := notify.New(notify.Options{Config: cfg.Notify, Logger: zerolog.Nop()})
	if err != nil {
		fmt.Fprintf(stderr, "notify-test: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), notifyTestTimeout)
	defer cancel()
	code := 0
	for _, r := range n.Test(ctx) {
		if r.Err != nil {
			fmt.Fprintf(stdout, "%s (%s): failed: %v\n", r.Sender, r.Where, r.Err)
			code = 1
			continue
		}
		switch r.Sender {
		case "alertmanager":
			fmt.Fprintf(stdout, "%s (%s): sent: alert %s fires for 5 minutes, then resolves\n", r.Sender, r.Where, notify.AlertTest)
		default:
			fmt.Fprintf(stdout, "%s (%s): sent\n", r.Sender, r.Where)
		}
	}
	return code
}
