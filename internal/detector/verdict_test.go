package detector_test

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/replay"
)

const transcripts = "../../testdata/transcripts/"

func replayAll(t *testing.T, file string) []detector.Alert {
	t.Helper()
	var out []detector.Alert
	if _, err := replay.File(transcripts+file, detector.Default(), func(a *detector.Alert) {
		out = append(out, *a)
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// nthCallSeq returns the seq of the n-th call the extension originated.
func nthCallSeq(t *testing.T, file string, tech ami.Tech, ext string, n int) int {
	t.Helper()
	f, err := os.Open(transcripts + file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := ami.NewTranscript(f)
	if _, err := tr.Banner(); err != nil {
		t.Fatal(err)
	}
	var (
		m     ami.Message
		ev    ami.Event
		calls int
	)
	for {
		seq, _, err := tr.Next(&m)
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s has fewer than %d calls of %s/%s", file, n, tech, ext)
		}
		if err != nil {
			t.Fatal(err)
		}
		// A call of the extension: on Asterisk 12+ a channel that is its
		// own Linkedid; the Asterisk 11 recording has no Linkedid, and no
		// channel of 200 or 201 in it is anything but a call they placed.
		if !ami.Decode(&m, &ev) || ev.Kind != ami.KindNewchannel || ev.Linkedid != "" && ev.Uniqueid != ev.Linkedid {
			continue
		}
		if cn, ok := ami.ParseChannel(ev.Channel); ok && cn.Tech == tech && cn.Name == ext {
			if calls++; calls == n {
				return seq
			}
		}
	}
}

// alertAddrs are the addresses an extension alert names for the extension.
func alertAddrs(a *detector.Alert) []netip.Addr { return slices.Concat(a.Sources, a.Contacts) }

func names(a *detector.Alert, what string) bool {
	if a.Extension == what || (a.IP.IsValid() && a.IP.String() == what) {
		return true
	}
	return slices.ContainsFunc(alertAddrs(a), func(s netip.Addr) bool { return s.String() == what })
}

func firstCritical(alerts []detector.Alert, match func(*detector.Alert) bool) *detector.Alert {
	for i := range alerts {
		if alerts[i].Severity == detector.Critical && match(&alerts[i]) {
			return &alerts[i]
		}
	}
	return nil
}

// The real Asterisk 20 attack: the stolen SIP/200 is critical by its 5th
// call, naming 127.0.0.2; the stolen PJSIP/300 by its 3rd, naming
// 127.0.0.5; the password guessing from 127.0.0.4 is critical; nothing
// critical names the legitimate 201 or its 127.0.0.3.
func TestAttackMixedVerdicts(t *testing.T) {
	alerts := replayAll(t, "attack-mixed.ami")
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }

	a200 := firstCritical(alerts, func(a *detector.Alert) bool {
		return a.Tech == ami.TechSIP && a.Extension == "200" && slices.Contains(a.Sources, ip("127.0.0.2"))
	})
	if a200 == nil {
		t.Fatal("no critical alert for SIP/200 naming 127.0.0.2")
	}
	if limit := nthCallSeq(t, "attack-mixed.ami", ami.TechSIP, "200", 5); a200.Seq > limit {
		t.Errorf("SIP/200 critical at seq %d, after its 5th call (seq %d)", a200.Seq, limit)
	}

	a300 := firstCritical(alerts, func(a *detector.Alert) bool {
		return a.Tech == ami.TechPJSIP && a.Extension == "300" && slices.Contains(a.Sources, ip("127.0.0.5"))
	})
	if a300 == nil {
		t.Fatal("no critical alert for PJSIP/300 naming 127.0.0.5")
	}
	if limit := nthCallSeq(t, "attack-mixed.ami", ami.TechPJSIP, "300", 3); a300.Seq > limit {
		t.Errorf("PJSIP/300 critical at seq %d, after its 3rd call (seq %d)", a300.Seq, limit)
	}

	if firstCritical(alerts, func(a *detector.Alert) bool { return a.IP == ip("127.0.0.4") }) == nil {
		t.Error("no critical alert for address 127.0.0.4 (password guessing)")
	}
	for _, innocent := range []string{"201", "127.0.0.3"} {
		if a := firstCritical(alerts, func(a *detector.Alert) bool { return names(a, innocent) }); a != nil {
			t.Errorf("critical alert names the legitimate %s: %+v", innocent, *a)
		}
	}
}

func TestPJSIPBruteforceVerdict(t *testing.T) {
	alerts := replayAll(t, "pjsip-bruteforce.ami")
	a := firstCritical(alerts, func(a *detector.Alert) bool {
		return a.Rule == detector.RuleAuthFailures && a.IP == netip.MustParseAddr("127.0.0.6")
	})
	if a == nil {
		t.Fatalf("no critical auth_failures alert for 127.0.0.6; got %v", alerts)
	}
	// Five requests, one of them raising three events: counted once each.
	if a.Count != 5 {
		t.Errorf("count = %d, want 5 (one per request)", a.Count)
	}
	for _, acct := range []string{"300", "301", "9999", "admin"} {
		if !slices.Contains(a.Accounts, acct) {
			t.Errorf("accounts %v lack %q", a.Accounts, acct)
		}
	}
}

// TestAsterisk11Verdicts: the real Asterisk 11 recording, whose AMI has no
// Linkedid and no security events. The stolen 200 is caught from its calls
// alone, its address from its registration (PeerStatus), and that
// registration is what lifts the cap on unauthenticated endpoints.
func TestAsterisk11Verdicts(t *testing.T) {
	const file = "asterisk11-attack-sip.ami"
	alerts := replayAll(t, file)
	a200 := firstCritical(alerts, func(a *detector.Alert) bool {
		return a.Tech == ami.TechSIP && a.Extension == "200" &&
			slices.Contains(alertAddrs(a), netip.MustParseAddr("127.0.0.12"))
	})
	if a200 == nil {
		t.Fatalf("no critical alert for SIP/200 naming 127.0.0.12; got %v", alerts)
	}
	if limit := nthCallSeq(t, file, ami.TechSIP, "200", 5); a200.Seq > limit {
		t.Errorf("SIP/200 critical at seq %d, after its 5th call (seq %d)", a200.Seq, limit)
	}
	for _, innocent := range []string{"201", "127.0.0.3", "carrier"} {
		if a := firstCritical(alerts, func(a *detector.Alert) bool { return names(a, innocent) }); a != nil {
			t.Errorf("critical alert names the legitimate %s: %+v", innocent, *a)
		}
	}
	for _, a := range alerts {
		if a.Note != "" {
			t.Errorf("alert capped although 200 registered: %+v", a)
		}
	}

	// Without its registration 200 was never seen authenticating (11 has no
	// SuccessfulAuth or ChallengeSent): the same calls are capped at warning.
	raw, err := os.ReadFile(transcripts + file)
	if err != nil {
		t.Fatal(err)
	}
	reg := "Peer: SIP/200\r\nPeerStatus: Registered\r\n"
	if bytes.Count(raw, []byte(reg)) != 1 {
		t.Fatalf("%s: expected one registration of 200", file)
	}
	unreg := bytes.Replace(raw, []byte(reg), []byte("Peer: SIP/200\r\nPeerStatus: Unreachable\r\n"), 1)
	capped := 0
	if _, err := replay.Reader(bytes.NewReader(unreg), detector.Default(), func(a *detector.Alert) {
		if a.Severity == detector.Critical {
			t.Errorf("critical without a registration: %+v", *a)
		}
		if a.Note != "" {
			capped++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if capped == 0 {
		t.Error("no capped alert for the unregistered 200")
	}
}
