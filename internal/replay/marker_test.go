package replay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/detector"
)

// newchannel is a call SIP/200 originates at t.
func newchannel(n int, t time.Time) string {
	return fmt.Sprintf("Event: Newchannel\r\nPrivilege: call,all\r\nChannel: SIP/200-%08x\r\nChannelState: 0\r\n"+
		"Context: from-internal\r\nExten: 0207946%04d\r\nPriority: 1\r\nUniqueid: 1795610817.%d\r\nLinkedid: 1795610817.%d\r\n"+
		"TimeReceived: %s\r\n\r\n", n, n, n, n, t.Format("2006-01-02T15:04:05.000000Z"))
}

// At an ami.RecordingStart marker the calls seen live are forgotten (a
// restarted guard learns them from Asterisk, which the recording does not
// hold) while the windows go on; positions count from the marker.
func TestRecordingStartMarker(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var s1, s2 strings.Builder
	for i := range 3 {
		s1.WriteString(newchannel(i, t0.Add(time.Duration(i)*100*time.Millisecond)))
	}
	for i := 3; i < 5; i++ {
		s2.WriteString(newchannel(i, t0.Add(time.Duration(i)*100*time.Millisecond)))
	}
	marker := "Event: AstguardRecordingStart\r\nBanner: Asterisk Call Manager/9.0.0\r\nTimeReceived: 2026-11-25T12:00:00.250000Z\r\n\r\n"
	cfg := detector.Default()
	cfg.UnauthenticatedCritical = true

	type got struct {
		rule  string
		count int
		seq   int
	}
	run := func(transcript string) []got {
		var out []got
		res, err := Reader(strings.NewReader(transcript), cfg, func(a *detector.Alert) {
			out = append(out, got{a.Rule.String() + " " + a.Severity.String(), a.Count, a.Seq})
		})
		if err != nil || res.Malformed != 0 {
			t.Fatalf("replay: %v, %+v", err, res)
		}
		return out
	}
	banner := "Asterisk Call Manager/9.0.0\r\n"

	// One session: five calls up at once within 1 s.
	one := run(banner + s1.String() + s2.String())
	want := []got{{"call_rate warning", 3, 3}, {"concurrent warning", 4, 4}, {"call_rate critical", 5, 5}}
	if fmt.Sprint(one) != fmt.Sprint(want) {
		t.Fatalf("one session: %v, want %v", one, want)
	}
	// Restarted after three calls: the burst still counts five calls in its
	// second, but only the two calls seen since the restart are up.
	two := run(banner + s1.String() + marker + s2.String())
	want = []got{{"call_rate warning", 3, 3}, {"call_rate critical", 5, 2}}
	if fmt.Sprint(two) != fmt.Sprint(want) {
		t.Fatalf("restarted: %v, want %v", two, want)
	}
}
