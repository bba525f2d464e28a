package guard

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
)

// startLegacyGuard runs the guard in enforce mode against a fake Asterisk
// 11 or 1.8 serving srvOpts.
func startLegacyGuard(t *testing.T, srv *amitest.Server) *harness {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Mode = config.ModeEnforce
	cfg.AMI.Address, cfg.AMI.Secret = srv.Addr(), "guardpass"
	cfg.AMI.ReconnectInterval = config.Duration(10 * time.Minute) // see startGuardWith
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.Firewall = config.FirewallDryRun
	cfg.Response.RetryBackoff = config.Duration(20 * time.Millisecond)
	h := &harness{srv: srv, cfg: cfg, fw: kernelFirewall{firewall.NewDryRun(zerolog.Nop())}, logs: &syncBuffer{}, done: make(chan error, 1), guard: make(chan *Guard, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.done <- Run(ctx, Options{Config: cfg, Logger: zerolog.New(h.logs), Firewall: h.fw, Started: func(g *Guard) { h.guard <- g }})
	}()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// hangupsSent returns the Channel of every Hangup action the server got.
func hangupsSent(srv *amitest.Server) []string {
	var out []string
	for _, a := range srv.Actions() {
		if a.Name != "Hangup" {
			continue
		}
		for _, hd := range a.Headers {
			if strings.EqualFold(hd[0], "Channel") {
				out = append(out, hd[1])
			}
		}
	}
	return out
}

// cut11 returns the Asterisk 11 recording up to (not including) the first
// message received at or after stamp.
func cut11(t *testing.T, stamp string) []byte {
	t.Helper()
	raw, err := os.ReadFile(transcripts + "asterisk11-attack-sip.ami")
	if err != nil {
		t.Fatal(err)
	}
	var cut bytes.Buffer
	for i, part := range bytes.SplitAfter(raw, []byte("\r\n\r\n")) {
		if j := bytes.Index(part, []byte("TimeReceived: ")); i > 0 && j >= 0 && string(part[j+14:j+14+len(stamp)]) >= stamp {
			break
		}
		cut.Write(part)
	}
	return cut.Bytes()
}

// TestLiveAsterisk11And1_8 runs the live guard against the real Asterisk 11
// attack, served as Asterisk 11 and as Asterisk 1.8, up to 01:04:15 (200's
// 22 calls started, none ended: only the guard can end them). The stolen 200
// is stopped on both: on 11 by the /regex/ Hangup, on 1.8 (no regex: "No
// such channel") by name, channel by channel, its later calls as they
// appear. Its secret is rotated and the address its calls come from
// blocked; 201 is left alone.
func TestLiveAsterisk11And1_8(t *testing.T) {
	t.Parallel()
	data := cut11(t, "2026-11-30T01:04:15")
	for _, v := range []amitest.Version{amitest.Asterisk11, amitest.Asterisk1_8} {
		t.Run(string(v), func(t *testing.T) {
			t.Parallel()
			srv, err := amitest.Start(amitest.Options{Version: v, Transcript: bytes.NewReader(data), Speed: 4, AutoPlay: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Close() })
			h := startLegacyGuard(t, srv)
			waitFor(t, "the ban of 127.0.0.12", 30*time.Second, func() bool {
				return slices.Contains(blocked(h), netip.MustParseAddr("127.0.0.12"))
			})
			waitFor(t, "200's secret rotated", 30*time.Second, func() bool {
				s, _ := confSection(srv.Conf("sip.conf"), "200", "secret")
				return s != "Leaky200"
			})
			select {
			case <-srv.Done():
			case <-time.After(30 * time.Second):
				t.Fatal("transcript not streamed")
			}
			waitFor(t, "no channel of 200 up", 10*time.Second, func() bool {
				return !slices.ContainsFunc(srv.LiveChannels(), func(c string) bool { return strings.HasPrefix(c, "SIP/200-") })
			})
			if !slices.ContainsFunc(srv.LiveChannels(), func(c string) bool { return strings.HasPrefix(c, "SIP/201-") }) {
				t.Errorf("201's call did not stay up: %v", srv.LiveChannels())
			}
			h.stop(t)

			sent := hangupsSent(srv)
			byName := slices.ContainsFunc(sent, func(c string) bool { return strings.HasPrefix(c, "SIP/200-") })
			byRegex := slices.Contains(sent, `/^SIP\/200-[0-9a-f]{8}$/`)
			switch {
			case v == amitest.Asterisk11 && !byRegex:
				t.Errorf("11: no regex Hangup among %v", sent)
			case v == amitest.Asterisk1_8 && byRegex:
				t.Errorf("1.8 (AMI 1.1) has no Hangup by regex, but one was sent: %v", sent)
			case v == amitest.Asterisk1_8 && !byName:
				t.Errorf("1.8: no Hangup by name among %v", sent)
			}
			for _, a := range srv.Actions() {
				for _, hd := range a.Headers {
					// (Login's MD5 key is random hex: "201" turns up in it by chance.)
					if strings.Contains(hd[1], "201") && a.Name != "Events" && a.Name != "Login" {
						t.Errorf("an action touched 201: %s %v", a.Name, a.Headers)
					}
				}
			}
			if b := blocked(h); len(b) != 1 {
				t.Errorf("blocked %v, want only 127.0.0.12", b)
			}
			if s, _ := confSection(srv.Conf("sip.conf"), "201", "secret"); s != "Strong201secret" {
				t.Errorf("201's secret changed")
			}
		})
	}
}

// TestLiveAsterisk11Resync: the guard connects while 200's 22 calls are
// already up. The state it rebuilds from 11's CoreShowChannels (UniqueID,
// Extension, no Linkedid) and SIPpeers is enough to stop them.
//
// It runs alone, not in parallel: the guard acts on the calls it finds as
// soon as its event session is logged in; when the CPU is short its urgent
// session may log in later, the Getvar asking the calls' address fails on
// it and the ban is skipped. That is a gap of the guard, which this test
// then shows (rarely, and more rarely alone).
func TestLiveAsterisk11Resync(t *testing.T) {
	// Up to 01:04:10 (all 22 calls of 200 up), streamed before the guard
	// connects: it sees none of their events.
	srv, err := amitest.Start(amitest.Options{Version: amitest.Asterisk11, Transcript: bytes.NewReader(cut11(t, "2026-11-30T01:04:10"))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	srv.Play()
	<-srv.Done()
	if n := len(srv.LiveChannels()); n != 44 {
		t.Fatalf("%d channels up before the guard connects, want 44", n)
	}
	h := startLegacyGuard(t, srv)
	waitFor(t, "every channel of 200 hung up", 20*time.Second, func() bool {
		return !slices.ContainsFunc(srv.LiveChannels(), func(c string) bool { return strings.HasPrefix(c, "SIP/200-") })
	})
	waitFor(t, "the ban of 127.0.0.12", 20*time.Second, func() bool {
		return slices.Contains(blocked(h), netip.MustParseAddr("127.0.0.12"))
	})
}
