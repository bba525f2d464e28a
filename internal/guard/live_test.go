package guard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/action/firewall"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/replay"
)

// SIGHUP: a bad file keeps the running configuration and says why; a good
// one takes effect.
func TestReloadKeepsOldConfigWhenNewIsBad(t *testing.T) {
	t.Parallel()
	srv, err := amitest.Start(amitest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.AMI.Address, cfg.AMI.Secret = srv.Addr(), "guardpass"
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.Firewall = config.FirewallDryRun
	var next atomic.Pointer[config.Config]
	var loadErr atomic.Pointer[error]
	reload := make(chan struct{})
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	gch := make(chan *Guard, 1)
	go func() {
		done <- Run(ctx, Options{Config: cfg, Reload: reload, Logger: zerolog.New(logs), Firewall: firewall.NewDryRun(zerolog.Nop()),
			Started: func(g *Guard) { gch <- g },
			Load: func() (*config.Config, error) {
				if e := loadErr.Load(); e != nil {
					return nil, *e
				}
				return next.Load(), nil
			}})
	}()
	g := <-gch
	bad := errors.New("detector.prefix_guess.window must be > 0")
	loadErr.Store(&bad)
	reload <- struct{}{}
	waitFor(t, "the refusal", 5*time.Second, func() bool { return strings.Contains(logs.String(), "keeping the running configuration") })
	if !strings.Contains(logs.String(), "detector.prefix_guess.window must be > 0") || g.cfg.Load() != cfg {
		t.Error("a bad reload was not refused with its reason")
	}
	good := *cfg
	good.Mode = config.ModeEnforce
	next.Store(&good)
	loadErr.Store(nil)
	reload <- struct{}{}
	waitFor(t, "the new mode", 5*time.Second, func() bool { return g.cfg.Load().Mode == config.ModeEnforce })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// guard run --record writes a transcript that guard replay reads back into
// the same verdicts.
func TestRecordingReplays(t *testing.T) {
	t.Parallel()
	rec := filepath.Join(t.TempDir(), "rec.ami")
	h := startGuardRecording(t, rec)
	<-h.srv.Done()
	// The guard has taken in what the replay below must find.
	waitFor(t, "the guard's criticals for SIP/200, PJSIP/300 and 127.0.0.4", 10*time.Second, func() bool {
		seen := map[string]bool{}
		for _, l := range rawLogLines(h, "fraud alert") {
			if l["severity"] == "critical" {
				seen[fmt.Sprint(l["tech"], "/", l["extension"])], seen[fmt.Sprint(l["ip"])] = true, true
			}
		}
		return seen["SIP/200"] && seen["PJSIP/300"] && seen["127.0.0.4"]
	})
	h.stop(t)
	var crit []string
	res, err := replay.File(rec, detector.Default(), func(a *detector.Alert) {
		if a.Severity == detector.Critical {
			if a.IsExtension() {
				crit = append(crit, a.Tech.String()+"/"+a.Extension)
			} else {
				crit = append(crit, a.IP.String())
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Messages < 1000 || res.Malformed != 0 {
		t.Errorf("recording: %+v", res)
	}
	for _, want := range []string{"SIP/200", "PJSIP/300", "127.0.0.4"} {
		if !slices.Contains(crit, want) {
			t.Errorf("replay of the recording lacks a critical for %s: %v", want, crit)
		}
	}
	raw, _ := os.ReadFile(rec)
	if !strings.HasPrefix(string(raw), "Asterisk Call Manager/9.0.0\r\n") || !strings.Contains(string(raw), "\r\nTimeReceived: ") {
		t.Errorf("recording does not look like a transcript: %.80q", raw)
	}
}

func startGuardRecording(t *testing.T, path string) *harness {
	t.Helper()
	data, err := os.ReadFile(transcripts + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	return startGuardOn(t, amitest.Options{Transcript: bytes.NewReader(data), Speed: 4, AutoPlay: true},
		func(c *config.Config) { c.Mode = config.ModeObserve }, nil, func(o *Options) { o.Record = path })
}

// After a rotation, the real phone at the extension's earlier address keeps
// failing with the old secret: that address is not blocked, and the outcome
// says the phone needs the new secret.
func TestEarlierAddressProtectedAfterRotation(t *testing.T) {
	t.Parallel()
	h := startGuardWith(t, "attack-mixed.ami", 4, nil, nil)
	// The office phone of 200 registered from 192.0.2.10 before the theft:
	// its REGISTER's PeerStatus and SuccessfulAuth, whose RemoteAddress
	// (not the PeerStatus Address, a contact) makes it a source.
	waitLoggedIn(t, h)
	h.srv.Inject("Event: PeerStatus\r\nPrivilege: system,all\r\nChannelType: SIP\r\nPeer: SIP/200\r\nPeerStatus: Registered\r\nAddress: 192.0.2.10:5060\r\n")
	h.srv.Inject(securityFrame("SuccessfulAuth", "SIP", "200", "IPV4/UDP/192.0.2.10/5060", "UsingPassword: 1"))
	waitFor(t, "200's rotation", 20*time.Second, func() bool {
		return strings.Contains(h.logs.String(), `"action":"rotate_secret","result":"done"`)
	})
	for i := range 6 {
		h.srv.Inject(fmt.Sprintf("Event: InvalidPassword\r\nPrivilege: security,all\r\nEventTV: 2026-11-25T12:47:30.000+0000\r\nSeverity: Error\r\nService: SIP\r\nEventVersion: 2\r\nAccountID: 200\r\nSessionID: 0x7fa2b40%05x\r\nLocalAddress: IPV4/UDP/127.0.0.1/5060\r\nRemoteAddress: IPV4/UDP/192.0.2.10/5060\r\nChallenge: 1e72b9ae\r\nReceivedChallenge: 1e72b9ae\r\nReceivedHash: 0f1d1e4c1e0b6a3f\r\n", i))
	}
	waitFor(t, "the skipped block", 10*time.Second, func() bool {
		return strings.Contains(h.logs.String(), "earlier address of SIP/200")
	})
	if slices.Contains(blocked(h), netip.MustParseAddr("192.0.2.10")) {
		t.Error("the real phone's address was blocked")
	}
	if !slices.Contains(blocked(h), netip.MustParseAddr("127.0.0.2")) {
		t.Error("the thief's address was not blocked")
	}
}
