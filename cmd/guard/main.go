// Command guard is astguard, a real-time toll-fraud guard for Asterisk.
//
//	guard demo [--firewall]                      the whole story against a simulated Asterisk
//	guard run [--config FILE] [--record FILE]   the live guard
//	guard replay [--config FILE] TRANSCRIPT...   detect fraud in recorded AMI traffic
//	guard check-config [--config FILE]           validate a configuration file
//	guard bans [--config FILE]                   list the bans
//	guard unblock [--config FILE] ADDRESS        lift a ban
//	guard version
//
// guard run reads /etc/astguard/config.toml unless --config names another
// file; guard bans and guard unblock read it when it exists.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/guard"
	"github.com/astguard/astguard/internal/replay"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `usage:
  guard demo [--firewall]                      run the guard against a simulated Asterisk 20 under attack
  guard run [--config FILE] [--record FILE] [--allow-shared-files]
                                               the live guard: watch AMI, stop fraud as the policy says
                                               (FILE: /etc/astguard/config.toml unless named)
  guard replay [--config FILE] TRANSCRIPT...   print the alerts found in recorded AMI traffic (JSON lines)
  guard check-config [--config FILE]           validate a configuration file (exit 0 or 1)
  guard bans [--config FILE] [--json]         list the bans (from the running guard, else its state file)
  guard unblock [--config FILE] ADDRESS        lift a ban
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
	case "replay":
		return cmdReplay(args[1:], stdout, stderr)
	case "check-config":
		return cmdCheckConfig(args[1:], stdout, stderr)
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
	zerolog.TimeFieldFormat = time.RFC3339Nano
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
	log := newLogger(stderr, cfg.Log.Level).With().Str("component", "replay").Logger()
	dcfg := cfg.Detector()
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	status := 0
	for _, file := range fs.Args() {
		var werr error
		res, err := replay.File(file, dcfg, func(a *detector.Alert) {
			if werr == nil {
				werr = enc.Encode(alert.FromAlert(a, file))
			}
		})
		if werr != nil {
			log.Error().Err(werr).Msg("cannot write alerts")
			return 1
		}
		if err != nil {
			log.Error().Err(err).Str("file", file).Int("messages", res.Messages).Msg("replay failed")
			status = 1
			continue
		}
		if res.Detector.Forged > 0 {
			log.Warn().Str("file", file).Uint64("forged", res.Detector.Forged).
				Msg("messages repeat a header the guard attributes by (a forged header in a caller name or user name?): not used")
		}
		log.Info().Str("file", file).Int("messages", res.Messages).Int("events", res.Events).
			Int("malformed", res.Malformed).Uint64("forged", res.Detector.Forged).Int("alerts", res.Alerts).
			Int("extensions", res.Detector.Extensions).Int("addresses", res.Detector.Addresses).
			Msg("replayed")
	}
	return status
}
