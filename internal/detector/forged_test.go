package detector_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
)

// Real Newchannel frames of a stolen extension's call: Asterisk 11
// (testdata/transcripts/asterisk11-attack-sip.ami) and Asterisk 20
// (attack-mixed.ami). CallerIDName is what the caller sent.
const (
	newchannel11 = "Event: Newchannel\r\nPrivilege: call,all\r\nChannel: SIP/200-000000aa\r\nChannelState: 0\r\n" +
		"ChannelStateDesc: Down\r\nCallerIDNum: 200\r\nCallerIDName: Alice\r\nAccountCode: \r\n" +
		"Exten: 00442071838750\r\nContext: from-internal\r\nUniqueid: 1796000640.170\r\n" +
		"TimeReceived: 2026-11-30T01:04:00.762962Z\r\n\r\n"
	newchannel20 = "Event: Newchannel\r\nPrivilege: call,all\r\nChannel: SIP/200-0000000d\r\nChannelState: 0\r\n" +
		"ChannelStateDesc: Down\r\nCallerIDNum: 200\r\nCallerIDName: Alice\r\nConnectedLineNum: <unknown>\r\n" +
		"ConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: from-internal\r\n" +
		"Exten: 0011442079460000\r\nPriority: 1\r\nUniqueid: 1795610819.14\r\nLinkedid: 1795610819.14\r\n" +
		"TimeReceived: 2026-11-25T12:46:59.130862Z\r\n\r\n"
)

// withCallerName returns frame with its caller name replaced.
func withCallerName(t *testing.T, frame, name string) string {
	t.Helper()
	if !strings.Contains(frame, "CallerIDName: Alice\r\n") {
		t.Fatal("frame has no caller name Alice")
	}
	return strings.Replace(frame, "CallerIDName: Alice\r\n", "CallerIDName: "+name+"\r\n", 1)
}

// feedFrames reads frames as the guard does (ami.Reader with its default
// 64 KiB message cap), decodes them and feeds the detector.
func feedFrames(t *testing.T, d *detector.Detector, frames ...string) []detector.Alert {
	t.Helper()
	r := ami.NewReader(strings.NewReader(strings.Join(frames, "")), ami.ReaderOptions{})
	var (
		m      ami.Message
		ev     ami.Event
		alerts []detector.Alert
	)
	for {
		err := r.Next(&m)
		if errors.Is(err, io.EOF) {
			return alerts
		}
		if err != nil {
			t.Fatal(err)
		}
		if !ami.Decode(&m, &ev) {
			t.Fatalf("frame not decoded: %q", m.Raw()[:min(80, len(m.Raw()))])
		}
		ev.Time = t0
		alerts = d.Process(&ev, alerts)
	}
}

// TestForgedChannelBlamesNoOne: a caller name carrying a line break and a
// Channel header of another extension. The call must not move to SIP/999,
// and since the message is not to be trusted it is counted for no one.
func TestForgedChannelBlamesNoOne(t *testing.T) {
	for name, frame := range map[string]string{"asterisk-11": newchannel11, "asterisk-20": newchannel20} {
		t.Run(name, func(t *testing.T) {
			d := detector.New(detector.Default())
			forged := withCallerName(t, frame, "Alice\r\nChannel: SIP/999-00000001")
			var frames []string
			for range 6 { // a burst that would be critical if counted
				frames = append(frames, forged)
			}
			if alerts := feedFrames(t, d, frames...); len(alerts) != 0 {
				t.Errorf("alerts from forged messages: %+v", alerts)
			}
			for _, ext := range []string{"200", "999"} {
				if got := d.LiveChannels(ami.TechSIP, ext, nil); len(got) != 0 {
					t.Errorf("calls counted for %s: %v", ext, got)
				}
			}
			if st := d.Stats(); st.Forged != 6 || st.Events != 0 || st.Extensions != 0 {
				t.Errorf("stats %+v, want 6 forged, nothing processed", st)
			}
		})
	}
}

// TestLongCallerNameStillCounts: long values are not forgeries. A caller
// name of 8 KiB and one of 30 KiB (the message stays within the reader's
// 64 KiB cap) still decode, and the call counts for its extension.
func TestLongCallerNameStillCounts(t *testing.T) {
	for name, frame := range map[string]string{"asterisk-11": newchannel11, "asterisk-20": newchannel20} {
		for _, size := range []int{8 << 10, 30 << 10} {
			d := detector.New(detector.Default())
			feedFrames(t, d, withCallerName(t, frame, strings.Repeat("A", size)))
			if got := d.LiveChannels(ami.TechSIP, "200", nil); len(got) != 1 {
				t.Errorf("%s, %d-byte caller name: live calls of 200 %v, want 1", name, size, got)
			}
			if st := d.Stats(); st.Forged != 0 || st.Events != 1 {
				t.Errorf("%s, %d-byte caller name: stats %+v", name, size, st)
			}
		}
	}
}
