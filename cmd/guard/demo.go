package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	astguard "github.com/astguard/astguard"
	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/guard"
)

// cmdDemo runs the guard, in enforce mode, against a simulated Asterisk 20
// inside the process: the fake AMI server replays the recorded attack over
// TCP on loopback and answers actions as the real one did.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	useFW := fs.Bool("firewall", false, "really block with iptables (chain ASTGUARD-DEMO, removed at the end); default: a dry-run firewall that only logs")
	speed := fs.Float64("speed", 1, "replay speed: 1 = as recorded (13 s), 10 = ten times faster")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	srv, err := amitest.Start(amitest.Options{
		Username:   "guard",
		Secret:     "guardpass",
		Transcript: bytes.NewReader(astguard.AttackTranscript),
		Speed:      *speed,
		AutoPlay:   true,
	})
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	defer srv.Close()
	before := map[string]string{"sip.conf": srv.Conf("sip.conf"), "pjsip.conf": srv.Conf("pjsip.conf")}

	dir, err := os.MkdirTemp("", "astguard-demo-")
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)

	cfg := config.Default()
	cfg.Mode = config.ModeEnforce
	cfg.AMI.Address = srv.Addr()
	cfg.AMI.Secret = "guardpass"
	cfg.AMI.ReconnectInterval = config.Duration(200 * time.Millisecond)
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.Firewall = "dry-run"
	// The simulated Asterisk keeps its secrets in its own files: never the
	// machine's FreePBX database, which auto would pick on a FreePBX box.
	cfg.Secrets.Store = config.StoreFiles
	if *useFW {
		cfg.Response.Firewall = "iptables"
		cfg.Response.Chain = "ASTGUARD-DEMO"
	}

	color := false
	if f, ok := stderr.(*os.File); ok {
		color = isatty.IsTerminal(f.Fd())
	}
	log := zerolog.New(zerolog.SyncWriter(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05.000", NoColor: !color})).With().Timestamp().Logger()
	log.Info().Str("ami", srv.Addr()).Msg("simulated Asterisk 20 is up: replaying a recorded attack (201 is the legitimate user)")

	var fw firewall.Firewall
	if *useFW {
		fw, err = firewall.NewIPTables(firewall.Options{Chain: cfg.Response.Chain, DisableIPv6: true, Logger: log})
		if err != nil {
			fmt.Fprintf(stderr, "demo: %v\n", err)
			return 1
		}
		defer fw.Teardown(context.Background())
	}
	ctx, cancel, _ := signals()
	defer cancel()
	var g *guard.Guard
	done := make(chan error, 1)
	go func() {
		done <- guard.Run(ctx, guard.Options{Config: cfg, Logger: log, Firewall: fw, Started: func(x *guard.Guard) { g = x }})
	}()
	select {
	case <-srv.Done():
		time.Sleep(3 * time.Second) // let the last actions finish
	case <-ctx.Done():
	case err := <-done:
		fmt.Fprintf(stderr, "demo: the guard stopped: %v\n", err)
		return 1
	}
	var banned []string
	if g != nil {
		for _, b := range g.Bans().List() {
			banned = append(banned, b.Target())
		}
	}
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}

	fmt.Fprintln(stdout, "\nWhat the guard did:")
	if *useFW {
		fmt.Fprintf(stdout, "  blocked:            %s (iptables chain %s)\n", strings.Join(banned, ", "), cfg.Response.Chain)
	} else {
		fmt.Fprintf(stdout, "  would block:        %s (dry-run firewall: nothing dropped; add --firewall to drop)\n", strings.Join(banned, ", "))
	}
	for _, f := range []string{"sip.conf", "pjsip.conf"} {
		changed := "unchanged"
		if srv.Conf(f) != before[f] {
			changed = "rewritten by UpdateConfig"
		}
		fmt.Fprintf(stdout, "  %-19s %s\n", f+":", changed)
	}
	fmt.Fprintf(stdout, "  new secrets:        written to %s (mode 0600; removed with the demo's temp dir)\n", cfg.Response.SecretsFile)
	fmt.Fprintf(stdout, "  still live:         %v\n", srv.LiveChannels())
	return 0
}
