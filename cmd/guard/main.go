// Command guard is astguard, a real-time toll-fraud guard for Asterisk.
//
//	guard demo [--firewall]                      the whole story against a simulated Asterisk
//	guard run [--config FILE] [--record FILE]   the live guard
//	guard replay [--config FILE] TRANSCRIPT...   detect fraud in recorded AMI traffic
//	guard check-config [--config FILE]           validate a configuration file
//	guard bans [--config FILE]                   list the bans
//	guard unblock [--config FILE] ADDRESS        lift a ban
//	guard incidents [--config FILE] [--json]     list the incidents
//	guard release [--config FILE] TECH/NAME      let a stopped extension call again
//	guard notify-test [--config FILE]            send a sample notification through each sender
//	guard version
//
// guard run reads /etc/astguard/config.toml unless --config names another
// file; guard bans, unblock, incidents and release read it when it exists.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/secret/setup"
	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/guard"
	"github.com/astguard/astguard/internal/replay"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// Log times to the nanosecond. Set once, before anything logs: the
// commands (and the tests running them side by side) only read it.
func init() { zerolog.TimeFieldFormat = time.RFC3339Nano }

const usage = `usage:
  guard demo [--firewall]                      run the guard against a simulated Asterisk 20 under attack
  guard run [--config FILE] [--record FILE] [--allow-shared-files]
                                               the live guard: watch AMI, stop fraud as the policy says
                                               (FILE: /etc/astguard/config.toml unless named)
  guard replay [--config FILE] TRANSCRIPT...   print the alerts found in recorded AMI traffic (JSON lines; a summary on stderr)
  guard check-config [--config FILE]           validate a configuration file (exit 0 or 1)
  guard bans [--config FILE] [--json]         list the bans (from the running guard, else its state file)
  guard unblock [--config FILE] ADDRESS        lift a ban
  guard incidents [--config FILE] [--json]     list the incidents: open ones, and those closed in the last 7 days
  guard release [--config FILE] TECH/NAME      end the open incident of an extension (e.g. SIP/200):
                                               its new calls are no longer hung up
  guard notify-test [--config FILE]            send one sample notification through each sender of [notify]
                                               and say what came of it (exit 1 when one failed)
  guard version
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "bans":
		return cmdBans(args[1:], stdout, stderr)
	case "unblock":
		return cmdUnblock(args[1:], stdout, stderr)
	case "incidents":
		return cmdIncidents(args[1:], stdout, stderr)
	case "release":
		return cmdRelease(args[1:], stdout, stderr)
	case "replay":
		return cmdReplay(args[1:], stdout, stderr)
	case "check-config":
		return cmdCheckConfig(args[1:], stdout, stderr)
	case "notify-test":
		return cmdNotifyTest(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "astguard", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "guard: unknown command %q\n%s", args[0], usage)
	return 2
}

func newLogger(w io.Writer, level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(zerolog.SyncWriter(w)).Level(lvl).With().Timestamp().Logger()
}

// loadConfig reads path, or returns the defaults when path is empty.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}

// configOrSay loads the configuration at path (the defaults when empty), or
// says on stderr why it is invalid.
func configOrSay(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := loadConfig(path)
	if err != nil {
		fmt.Fprintf(stderr, "config is invalid:\n%v\n", err)
		return nil, false
	}
	return cfg, true
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (TOML); without it the defaults are checked")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "check-config: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, ok := configOrSay(*path, stderr)
	if !ok {
		return 1
	}
	name := *path
	if name == "" {
		name = "defaults"
	}
	fmt.Fprintf(stdout, "%s: ok\n", name)
	// What the guard would never block, the AMI server's addresses
	// resolved as at its start.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	never, err := guard.NeverBlock(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: warning: %v: the guard would start without protecting the AMI server from a ban, "+
			"and resolve it again at every reload and AMI connect\n", name, err)
	}
	fmt.Fprintf(stdout, "never blocked: %s\n", prefixList(never))
	// Where rotate_secret would change the secrets, and why.
	choice := setup.Choose(cfg.Secrets)
	fmt.Fprintf(stdout, "secrets: %s: %s\n", choice.Store, choice.Why)
	if choice.Database != "" {
		fmt.Fprintf(stdout, "secrets database: %s\n", choice.Database)
	}
	if choice.Err != nil {
		fmt.Fprintf(stderr, "%s: secrets: %v: every rotate_secret would fail\n", name, choice.Err)
		return 1
	}
	return 0
}

// prefixList writes the networks once each, in order, without the /32 or
// /128 of a single address.
func prefixList(ps []netip.Prefix) string {
	var out []string
	for _, p := range ps {
		s := p.String()
		if p.IsSingleIP() {
			s = p.Addr().String()
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, ", ")
}

func cmdReplay(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (TOML); without it the defaults apply")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, "replay: name at least one transcript\n", usage)
		return 2
	}
	cfg, ok := configOrSay(*path, stderr)
	if !ok {
		return 1
	}
	pol := replay.Policy{Acts: policyActs(cfg), Enforce: cfg.Mode == config.ModeEnforce}
	out := bufio.NewWriterSize(stdout, 64<<10)
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	var (
		summaries []replay.FileSummary
		werr      error
	)
	// Each transcript on its own core; the alerts come out in the order of
	// the files, as if they were replayed one after the other.
	replay.Files(fs.Args(), cfg.Detector(), runtime.GOMAXPROCS(0), func(fr *replay.FileResult) bool {
		for i := range fr.Alerts {
			if werr = enc.Encode(alert.FromAlert(&fr.Alerts[i], fr.Path)); werr != nil {
				return false
			}
		}
		if werr = out.Flush(); werr != nil {
			return false
		}
		summaries = append(summaries, replay.Summarize(fr, pol))
		return true
	})
	if werr != nil {
		fmt.Fprintf(stderr, "replay: cannot write the alerts: %v\n", werr)
		return 1
	}
	if err := replay.WriteSummary(stderr, summaries); err != nil {
		return 1
	}
	for _, s := range summaries {
		if s.Err != nil {
			return 1
		}
	}
	return 0
}

// policyActs reports whether the policy of cfg acts on an alert of a rule
// and severity (any action but logging it).
func policyActs(cfg *config.Config) func(detector.Rule, detector.Severity) bool {
	return func(r detector.Rule, s detector.Severity) bool {
		for _, a := range cfg.Policy.Actions(r.String(), s.String()) {
			if a != config.ActionAlert {
				return true
			}
		}
		return false
	}
}
