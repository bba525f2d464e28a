package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/fsafe"
	"github.com/astguard/astguard/internal/guard"
)

// signals turns SIGINT/SIGTERM into ctx's end and SIGHUP into a reload.
func signals() (context.Context, context.CancelFunc, <-chan struct{}) {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	reload := make(chan struct{}, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for {
			select {
			case <-ctx.Done():
				signal.Stop(hup)
				return
			case <-hup:
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}
	}()
	return ctx, cancel, reload
}

// installedConfig is where the README installs the configuration: guard
// run reads it when --config is not given, and guard bans and guard unblock
// when it exists, so that they find the socket and the state file the
// installed guard uses.
var installedConfig = "/etc/astguard/config.toml"

// configPathForAdmin is the configuration guard bans and guard unblock read:
// the one named, else the installed one if there is one, else none (the
// defaults' paths).
func configPathForAdmin(named string) string {
	if named != "" {
		return named
	}
	if _, err := os.Stat(installedConfig); err == nil {
		return installedConfig
	}
	return ""
}

// checkRunFiles checks the configuration file, the file the AMI secret
// came from, the notifiers' secret files, the database password files of
// [secrets] and the CrowdSec credentials' files as guard run wants them
// (fsafe.CheckNotPublic): regular files
// owned by root or the guard's user, writable by no one else, readable by
// no one but a group. With allowShared, a file whose only fault is that
// every user can read it is accepted and returned, for a warning.
func checkRunFiles(configPath string, cfg *config.Config, allowShared bool) (shared []string, err error) {
	files := append([]string{configPath, cfg.SecretFilePath(configPath)}, cfg.NotifySecretFiles(configPath)...)
	files = append(files, cfg.DBPasswordFiles()...)
	for _, p := range append(files, cfg.CrowdSecSecretFiles(configPath)...) {
		if p == "" {
			continue
		}
		err := fsafe.CheckNotPublic(p)
		if allowShared && errors.Is(err, fsafe.ErrReadableByOthers) {
			shared = append(shared, p)
			continue
		}
		if err != nil {
			return nil, err
		}
	}
	return shared, nil
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", installedConfig, "configuration file (TOML)")
	record := fs.String("record", "", "also write everything received to this transcript (replayable with guard replay); an existing one is appended to")
	recordMax := fs.Int64("record-max-bytes", 100<<20, "rotate the recording at this size")
	recordKeep := fs.Int("record-keep", 5, "rotated recordings to keep")
	allowShared := fs.Bool("allow-shared-files", false, "accept a configuration, AMI secret or CrowdSec credentials file every user can read (a container mount whose mode cannot be changed)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprint(stderr, "run: usage: guard run [--config FILE] [--record FILE] [--allow-shared-files]\n")
		return 2
	}
	// Absolute, so that every message names the file a reload reads.
	file, err := filepath.Abs(*path)
	if err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	cfg, ok := configOrSay(file, stderr)
	if !ok {
		return 1
	}
	shared, err := checkRunFiles(file, cfg, *allowShared)
	if err != nil {
		fmt.Fprintf(stderr, "run: refusing to start: %v\n", err)
		if errors.Is(err, fsafe.ErrReadableByOthers) {
			fmt.Fprint(stderr, "run: on a container mount whose mode cannot be changed, start with --allow-shared-files\n")
		}
		return 1
	}
	log := newLogger(stderr, cfg.Log.Level)
	for _, p := range shared {
		log.Warn().Str("file", p).Msg("file readable by every user, accepted (--allow-shared-files)")
	}
	ctx, cancel, reload := signals()
	defer cancel()
	err = guard.Run(ctx, guard.Options{
		Config:     cfg,
		ConfigFile: file,
		Version:    version,
		Load: func() (*config.Config, error) {
			c, err := config.Load(file)
			if err != nil {
				return nil, err
			}
			if _, err := checkRunFiles(file, c, *allowShared); err != nil {
				return nil, err
			}
			return c, nil
		},
		Reload:         reload,
		Logger:         log,
		Record:         *record,
		RecordMaxBytes: *recordMax,
		RecordKeep:     *recordKeep,
	})
	if err != nil {
		log.Error().Err(err).Msg("guard failed")
		return 1
	}
	return 0
}

// cmdBans lists the bans: from the running daemon, or from the state file
// when none runs.
func cmdBans(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bans", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (TOML); without it "+installedConfig+" if it exists, else the defaults' paths")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, ok := configOrSay(configPathForAdmin(*path), stderr)
	if !ok {
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := guard.NewAdminClient(cfg.Response.AdminSocket).Bans(ctx)
	source := "daemon"
	unknown := false
	if errors.Is(err, guard.ErrNoDaemon) {
		source = "state file (no guard running)"
		list, unknown, err = offlineBans(ctx, cfg, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bans: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(list)
		return 0
	}
	real := 0
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ADDRESS\tKIND\tSINCE\tUNTIL\tRULE\tEXTENSION\tREASON\n")
	for _, b := range list {
		until := "never"
		if !b.Until.IsZero() {
			until = b.Until.UTC().Format(time.RFC3339)
		}
		kind := "dry-run"
		switch {
		case unknown:
			kind = "unknown"
		case !b.DryRun:
			kind = "real"
			real++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Target(), kind, b.Since.UTC().Format(time.RFC3339), until, b.Rule, b.Extension, b.Reason)
	}
	_ = tw.Flush()
	if unknown {
		fmt.Fprintf(stderr, "%d bans, from the %s\n", len(list), source)
	} else {
		fmt.Fprintf(stderr, "%d bans (%d real, %d dry-run), from the %s\n", len(list), real, len(list)-real, source)
	}
	return 0
}

// offlineBans reads the bans from the state file when no guard runs. A
// version 1 file does not say which bans were real: the firewall the
// configuration names is asked, as the guard does when it starts (real
// when the guard's chain holds the ban's rule). When it cannot be asked
// (not root), unknown is true and stderr says why.
func offlineBans(ctx context.Context, cfg *config.Config, stderr io.Writer) (list []bans.Ban, unknown bool, err error) {
	st, err := bans.ReadState(cfg.Response.StateFile)
	if err != nil || st.Version == bans.StateVersion {
		return st.Bans, false, err
	}
	fw, err := guard.NewFirewall(cfg, zerolog.Nop())
	if err == nil {
		_, _, err = st.Upgrade(ctx, fw)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bans: the state file is version 1, which did not record whether a ban was real, and the firewall cannot be asked (%v); the guard decides when it starts: real when its chain holds the ban's rule\n", err)
		return st.Bans, true, nil
	}
	return st.Bans, false, nil
}

// cmdUnblock lifts a ban through the running daemon, or through the state
// file and the firewall when none runs.
func cmdUnblock(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("unblock", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (TOML); without it "+installedConfig+" if it exists, else the defaults' paths")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprint(stderr, "unblock: usage: guard unblock [--config FILE] ADDRESS\n")
		return 2
	}
	addr, err := netip.ParseAddr(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "unblock: %q is not an IP address\n", fs.Arg(0))
		return 2
	}
	addr = addr.Unmap()
	cfg, ok := configOrSay(configPathForAdmin(*path), stderr)
	if !ok {
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	how := ""
	lifted, err := guard.NewAdminClient(cfg.Response.AdminSocket).Unblock(ctx, addr)
	if errors.Is(err, guard.ErrNoDaemon) {
		fw, ferr := guard.NewFirewall(cfg, newLogger(stderr, cfg.Log.Level))
		if ferr != nil {
			fmt.Fprintf(stderr, "unblock: %v\n", ferr)
			return 1
		}
		lifted, err = bans.UnbanOffline(ctx, cfg.Response.StateFile, fw, addr)
		how = " (no guard running: state file and firewall updated)"
	}
	if err != nil {
		fmt.Fprintf(stderr, "unblock: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s unblocked%s\n", addr, how)
	for _, b := range lifted {
		if b.Target() != addr.String() {
			fmt.Fprintf(stdout, "  the ban of %s, the network holding it, is lifted: every address in it passes again\n", b.Target())
		}
	}
	return 0
}
