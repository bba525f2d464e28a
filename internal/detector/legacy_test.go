package detector_test

import (
	"bufio"
	"errors"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

func TestIsCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   ami.Event
		want bool
	}{
		{"20: the caller's channel", ami.Event{Channel: "SIP/201-00000007", Uniqueid: "1.8", Linkedid: "1.8", Exten: "02079460123"}, true},
		{"20: the carrier leg", ami.Event{Channel: "SIP/carrier-00000008", Uniqueid: "1.9", Linkedid: "1.8"}, false},
		{"20: a leg with an Exten", ami.Event{Channel: "SIP/210-00000008", Uniqueid: "1.9", Linkedid: "1.8", Exten: "s"}, false},
		{"20: Local ;1 of an Originate", ami.Event{Channel: "Local/220@from-internal-00000001;1", Uniqueid: "1.1", Linkedid: "1.1", Exten: "s"}, true},
		{"11: the caller's channel", ami.Event{Channel: "SIP/200-000000aa", Uniqueid: "1796000640.170", Exten: "00442071838750"}, true},
		{"11: the carrier leg", ami.Event{Channel: "SIP/carrier-000000ab", Uniqueid: "1796000640.171"}, false},
		{"11: a trunk's incoming call", ami.Event{Channel: "SIP/carrier-00000101", Uniqueid: "1.501", Exten: "02079460100"}, true},
		{"11: a trunk's incoming call without a number", ami.Event{Channel: "SIP/carrier-00000101", Uniqueid: "1.501", Exten: "s"}, true},
		{"11: a Local half", ami.Event{Channel: "Local/220@from-internal-00000001;1", Uniqueid: "1.1", Exten: "220"}, false},
		{"no Uniqueid", ami.Event{Channel: "SIP/200-000000aa", Exten: "0044"}, false},
	} {
		if got := detector.IsCall(&tc.ev); got != tc.want {
			t.Errorf("%s: IsCall = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// getter looks keys up in a list item the way the guard's caller must:
// ignoring case.
func getter(item map[string]string) func(string) string {
	return func(key string) string {
		for k, v := range item {
			if strings.EqualFold(k, key) {
				return v
			}
		}
		return ""
	}
}

func TestLiveChannelFrom(t *testing.T) {
	// CoreShowChannel items of the recorded dialogs (fields the guard
	// reads, and neighbours that must not be taken for them).
	v20 := map[string]string{"Channel": "SIP/200-00000129", "Context": "from-internal", "Exten": "0011442079460000",
		"Uniqueid": "1795610819.297", "Linkedid": "1795610819.297", "BridgeId": "x"}
	v11 := map[string]string{"Channel": "SIP/200-000000e0", "UniqueID": "1796000680.224", "Context": "from-internal",
		"Extension": "0011442071838750", "BridgedChannel": "SIP/carrier-000000e1", "BridgedUniqueID": "1796000680.225"}
	leg11 := map[string]string{"Channel": "SIP/carrier-000000e1", "UniqueID": "1796000680.225", "Extension": ""}
	for _, tc := range []struct {
		item map[string]string
		want detector.LiveChannel
	}{
		{v20, detector.LiveChannel{Channel: "SIP/200-00000129", Uniqueid: "1795610819.297", Linkedid: "1795610819.297", Exten: "0011442079460000"}},
		{v11, detector.LiveChannel{Channel: "SIP/200-000000e0", Uniqueid: "1796000680.224", Exten: "0011442071838750"}},
		{leg11, detector.LiveChannel{Channel: "SIP/carrier-000000e1", Uniqueid: "1796000680.225"}},
	} {
		if got := detector.LiveChannelFrom(getter(tc.item)); got != tc.want {
			t.Errorf("LiveChannelFrom(%v) = %+v, want %+v", tc.item, got, tc.want)
		}
	}
}

// dialogItems returns the events of a recorded dialog's list reply.
func dialogItems(t *testing.T, path, event string) []map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		items []map[string]string
		cur   map[string]string
	)
	for _, line := range strings.Split(string(b), "\n") {
		body, ok := strings.CutPrefix(strings.TrimSuffix(line, "\r"), "<<< ")
		if !ok {
			continue
		}
		if body == "" {
			if cur != nil && cur["Event"] == event {
				items = append(items, cur)
			}
			cur = nil
			continue
		}
		if cur == nil {
			cur = map[string]string{}
		}
		k, v, _ := strings.Cut(body, ":")
		cur[k] = strings.TrimPrefix(v, " ")
	}
	return items
}

// TestResyncAsterisk11 rebuilds the live calls from the CoreShowChannels of
// the real Asterisk 11 dialog (200 with 5 calls up, each bridged to a
// carrier leg): the 5 calls are 200's, the carrier legs nobody's.
func TestResyncAsterisk11(t *testing.T) {
	items := dialogItems(t, "../ami/amitest/testdata/asterisk-11/actions-dialog.txt", "CoreShowChannel")
	if len(items) != 10 {
		t.Fatalf("%d CoreShowChannel items in the dialog, want 10", len(items))
	}
	var live []detector.LiveChannel
	for _, it := range items {
		live = append(live, detector.LiveChannelFrom(getter(it)))
	}
	// As the guard does after a (re)connect: the registrations SIPpeers
	// lists (200 at 127.0.0.12 in the dialog), then the channels.
	d := detector.New(detector.Default())
	d.Process(&ami.Event{Kind: ami.KindPeerStatus, Time: t0, Peer: "SIP/200", Status: "Registered",
		Addr: netip.MustParseAddr("127.0.0.12")}, nil)
	alerts := d.Resync(t0, live, nil)
	got := d.LiveChannels(ami.TechSIP, "200", nil)
	slices.Sort(got)
	want := []string{"SIP/200-000000dc", "SIP/200-000000de", "SIP/200-000000e0", "SIP/200-000000e2", "SIP/200-000000e4"}
	if !slices.Equal(got, want) {
		t.Errorf("live calls of 200: %v, want %v", got, want)
	}
	if c := d.LiveChannels(ami.TechSIP, "carrier", nil); len(c) != 0 {
		t.Errorf("carrier legs taken for calls: %v", c)
	}
	var rules []string
	for _, a := range alerts {
		if a.Extension != "200" {
			t.Errorf("alert for %s/%s", a.Tech, a.Extension)
		}
		rules = append(rules, a.Severity.String()+" "+a.Rule.String())
	}
	// Five calls up; one number behind 00, 011, 0011, 9011 and 900.
	if w := []string{"warning prefix_guess", "critical prefix_guess", "warning concurrent"}; !slices.Equal(rules, w) {
		t.Errorf("alerts %v, want %v", rules, w)
	}
	// Asterisk says nothing is up any more: the calls are dropped.
	d.Resync(t0, nil, nil)
	if got := d.LiveChannels(ami.TechSIP, "200", nil); len(got) != 0 {
		t.Errorf("after an empty resync: %v", got)
	}
}

// TestAsterisk11CallsEnd follows the live calls through the real Asterisk 11
// recording: 200's 22 calls are all up at once and all end (Hangup carries
// no Linkedid there), 201 never has more than one, the carrier none.
func TestAsterisk11CallsEnd(t *testing.T) {
	f, err := os.Open(transcripts + "asterisk11-attack-sip.ami")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := ami.NewTranscript(bufio.NewReader(f))
	if _, err := tr.Banner(); err != nil {
		t.Fatal(err)
	}
	d := detector.New(detector.Default())
	var (
		m                  ami.Message
		ev                 ami.Event
		peak200, peak201   int
		calls200, calls201 int
	)
	for {
		seq, at, err := tr.Next(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !ami.Decode(&m, &ev) {
			continue
		}
		ev.Seq, ev.Time = seq, at
		d.Process(&ev, nil)
		if ev.Kind == ami.KindNewchannel && detector.IsCall(&ev) {
			switch {
			case strings.HasPrefix(ev.Channel, "SIP/200-"):
				calls200++
			case strings.HasPrefix(ev.Channel, "SIP/201-"):
				calls201++
			default:
				t.Errorf("seq %d: %s counted as a call", seq, ev.Channel)
			}
		}
		peak200 = max(peak200, len(d.LiveChannels(ami.TechSIP, "200", nil)))
		peak201 = max(peak201, len(d.LiveChannels(ami.TechSIP, "201", nil)))
		if n := len(d.LiveChannels(ami.TechSIP, "carrier", nil)); n != 0 {
			t.Fatalf("seq %d: %d live calls of the carrier", seq, n)
		}
	}
	if calls200 != 22 || calls201 != 4 || peak200 != 22 || peak201 != 1 {
		t.Errorf("calls 200 %d (peak %d), 201 %d (peak %d); want 22 (22), 4 (1)", calls200, peak200, calls201, peak201)
	}
	for _, ext := range []string{"200", "201"} {
		if got := d.LiveChannels(ami.TechSIP, ext, nil); len(got) != 0 {
			t.Errorf("%s still has live calls at the end: %v", ext, got)
		}
	}
}
