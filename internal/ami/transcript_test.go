package ami

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestTranscriptAttackMixed(t *testing.T) {
	data := readFixture(t, "attack-mixed.ami")
	tr := NewTranscript(bytes.NewReader(data))
	banner, err := tr.Banner()
	if err != nil || banner != "Asterisk Call Manager/9.0.0" {
		t.Fatalf("Banner = %q, %v", banner, err)
	}
	var (
		m              Message
		n, lastSeq     int
		first, prev    time.Time
		raw            bytes.Buffer
		firstResponse  bool
		lastTimeString string
	)
	raw.WriteString(banner + "\r\n")
	for {
		seq, tm, err := tr.Next(&m)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("message %d: %v", n+1, err)
		}
		n++
		if seq != n {
			t.Fatalf("seq %d, want %d", seq, n)
		}
		if n == 1 {
			first = tm
			firstResponse = m.IsResponse() && m.Get("Response") == "Success"
		}
		if tm.Before(prev) {
			t.Fatalf("message %d: time %v before %v", seq, tm, prev)
		}
		if tm.Location() != time.UTC {
			t.Fatalf("message %d: time not in UTC: %v", seq, tm)
		}
		prev, lastSeq = tm, seq
		lastTimeString = m.Get("TimeReceived")
		raw.Write(m.Raw())
	}
	if n != 4093 || lastSeq != 4093 {
		t.Errorf("read %d messages, last seq %d; want 4093", n, lastSeq)
	}
	if want := time.Date(2026, 11, 25, 12, 46, 54, 751740000, time.UTC); !first.Equal(want) || !firstResponse {
		t.Errorf("first message at %v (login response %v), want %v", first, firstResponse, want)
	}
	if want, _ := time.Parse(time.RFC3339Nano, lastTimeString); !prev.Equal(want) {
		t.Errorf("last time %v, want %v", prev, want)
	}
	// Re-recording the raw messages gives the file back byte for byte.
	if !bytes.Equal(raw.Bytes(), data) {
		t.Errorf("banner + Raw of every message differs from the file (%d vs %d bytes)", raw.Len(), len(data))
	}
	if st := tr.Stats(); st != (ReaderStats{Messages: 4093, Bytes: int64(len(data))}) {
		t.Errorf("stats %+v", st)
	}
	// io.EOF sticks.
	if _, _, err := tr.Next(&m); err != io.EOF {
		t.Errorf("after the end: %v", err)
	}
}

func TestTranscriptAllFixtures(t *testing.T) {
	// Message counts: the number of TimeReceived lines of each file.
	for name, want := range map[string]int{
		"attack-mixed.ami": 4093, "after-rotation.ami": 934, "hangup-events.ami": 706, "pjsip-bruteforce.ami": 17,
	} {
		data := readFixture(t, name)
		tr := NewTranscript(iotest.HalfReader(bytes.NewReader(data))) // short reads, as from a socket
		var m Message
		n := 0
		var err error
		for {
			var seq int
			if seq, _, err = tr.Next(&m); err != nil {
				break
			}
			if !m.Has("TimeReceived") {
				t.Errorf("%s: message %d has no TimeReceived", name, seq)
			}
			n++
		}
		if err != io.EOF || n != want || bytes.Count(data, []byte("\nTimeReceived: ")) != want {
			t.Errorf("%s: read %d messages, ended with %v; want %d", name, n, err, want)
		}
	}
}

func TestTranscriptTimeFallbacks(t *testing.T) {
	in := "Asterisk Call Manager/9.0.0\r\n" +
		// 1: no time at all, first message: zero time.
		"Response: Success\r\nMessage: Authentication accepted\r\n\r\n" +
		// 2: TimeReceived wins over EventTV.
		"Event: InvalidPassword\r\nEventTV: 2026-11-25T12:00:00.000+0000\r\nTimeReceived: 2026-11-25T12:46:57.214129Z\r\n\r\n" +
		// 3: EventTV with no colon in the offset.
		"Event: InvalidPassword\r\nEventTV: 2026-11-25T14:46:58.213+0200\r\n\r\n" +
		// 4: a bad TimeReceived falls through to EventTV.
		"Event: X\r\nEventTV: 2026-11-25T12:46:58.500+0000\r\nTimeReceived: yesterday\r\n\r\n" +
		// 5: Uniqueid epoch seconds.
		"Event: Newchannel\r\nUniqueid: 1795610819.8\r\n\r\n" +
		// 6: Uniqueid with a system name.
		"Event: Hangup\r\nUniqueid: pbx-1-1795610820.12\r\n\r\n" +
		// 7: nothing: the previous time.
		"Event: VarSet\r\nVariable: x\r\n\r\n" +
		// 8: malformed: consumes a seq, keeps the previous time.
		"Event: Bad\r\ngarbage\r\nTimeReceived: 2030-01-01T00:00:00Z\r\n\r\n" +
		// 9: a bad Uniqueid: the previous time.
		"Event: Hangup\r\nUniqueid: pbx-abc.1\r\n\r\n" +
		// 10: RFC 3339 with an offset, nanoseconds.
		"Event: X\r\nTimeReceived: 2026-11-25T13:47:00.123456789+01:00\r\n\r\n"
	utc := func(h, m, s, ns int) time.Time { return time.Date(2026, 11, 25, h, m, s, ns, time.UTC) }
	want := []struct {
		t   time.Time
		bad bool
	}{
		{t: time.Time{}},
		{t: utc(12, 46, 57, 214129000)},
		{t: utc(12, 46, 58, 213000000)},
		{t: utc(12, 46, 58, 500000000)},
		{t: time.Unix(1795610819, 0).UTC()},
		{t: time.Unix(1795610820, 0).UTC()},
		{t: time.Unix(1795610820, 0).UTC()},
		{t: time.Unix(1795610820, 0).UTC(), bad: true},
		{t: time.Unix(1795610820, 0).UTC()},
		{t: utc(12, 47, 0, 123456789)},
	}
	tr := NewTranscript(strings.NewReader(in))
	var m Message
	for i, w := range want {
		seq, tm, err := tr.Next(&m)
		if seq != i+1 || !tm.Equal(w.t) || errors.Is(err, ErrMalformed) != w.bad || (err != nil) != w.bad {
			t.Errorf("message %d: seq %d, time %v, err %v; want time %v, malformed %v", i+1, seq, tm, err, w.t, w.bad)
		}
	}
	if seq, tm, err := tr.Next(&m); err != io.EOF || seq != 0 || !tm.IsZero() {
		t.Errorf("end: %d %v %v", seq, tm, err)
	}
}

func TestTranscriptBadBanner(t *testing.T) {
	tr := NewTranscript(strings.NewReader("Event: FullyBooted\r\n\r\n"))
	var m Message
	if _, _, err := tr.Next(&m); !errors.Is(err, ErrBanner) {
		t.Errorf("got %v, want ErrBanner", err)
	}
	tr.Reset(strings.NewReader("Asterisk Call Manager/1.1\r\nEvent: A\r\n\r\n"))
	if seq, _, err := tr.Next(&m); err != nil || seq != 1 {
		t.Errorf("after Reset: %d %v", seq, err)
	}
	if b, err := tr.Banner(); b != "Asterisk Call Manager/1.1" || err != nil {
		t.Errorf("Banner after Next: %q %v", b, err)
	}
}

func TestParseTimestamp(t *testing.T) {
	for _, s := range []string{
		"2026-11-25T12:46:54.751740Z", "2026-11-25T12:46:54Z", "2026-11-25T12:46:54.7Z",
		"2026-11-25T12:46:57.213+0000", "2026-11-25T12:46:57.213-0530", "2026-11-25T12:46:57+05:30",
		"2024-02-29T23:59:59.999999999Z", "1970-01-01T00:00:00Z",
	} {
		got, ok := parseTimestamp([]byte(s))
		var want time.Time
		var err error
		for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999-0700"} {
			if want, err = time.Parse(layout, s); err == nil {
				break
			}
		}
		if !ok || err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("parseTimestamp(%q) = %v, %v; time.Parse says %v, %v", s, got, ok, want, err)
		}
	}
	for _, s := range []string{
		"", "2026-11-25", "2026-11-25T12:46:54", "2026-11-25 12:46:54Z", "2026-13-25T12:46:54Z",
		"2026-02-30T12:46:54Z", "2026-11-25T24:00:00Z", "2026-11-25T12:60:00Z", "2026-11-25T12:46:60Z",
		"2026-11-25T12:46:54.Z", "2026-11-25T12:46:54.1234567890Z", "2026-11-25T12:46:54+000",
		"2026-11-25T12:46:54+24:00", "2026-11-25T12:46:54Zx", "2026-11-25T12:46:54.5", "2026-1a-25T12:46:54Z",
		"-026-11-25T12:46:54Z",
	} {
		if got, ok := parseTimestamp([]byte(s)); ok {
			t.Errorf("parseTimestamp(%q) = %v, true", s, got)
		}
	}
	if n := testing.AllocsPerRun(100, func() { parseTimestamp([]byte("2026-11-25T12:46:54.751740Z")) }); n != 0 {
		t.Errorf("parseTimestamp allocates %v times", n)
	}
}

// With Skip, the messages not skipped come with the positions and times they
// have without it.
func TestTranscriptSkipSameTimes(t *testing.T) {
	data := readFixture(t, "attack-mixed.ami")
	type got struct {
		seq int
		tm  time.Time
	}
	read := func(opts ReaderOptions) map[int]got {
		tr := NewTranscriptOptions(bytes.NewReader(data), opts)
		out := map[int]got{}
		var m Message
		for {
			seq, tm, err := tr.Next(&m)
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out[seq] = got{seq, tm}
		}
	}
	all := read(ReaderOptions{})
	some := read(ReaderOptions{Skip: skipNames("VarSet", "Newexten", "Newstate")})
	if len(all) != 4093 || len(some) >= len(all)-2000 || len(some) == 0 {
		t.Fatalf("%d messages read in full, %d with skipping", len(all), len(some))
	}
	for seq, g := range some {
		if all[seq] != g {
			t.Errorf("message %d: %v with skipping, %v without", seq, g, all[seq])
		}
	}
}

// A message without a time of its own after skipped messages cannot know its
// time: Next says so instead of guessing.
func TestTranscriptSkipLosesTime(t *testing.T) {
	const in = "Asterisk Call Manager/2.10.5\r\n" +
		"Event: Newchannel\r\nUniqueid: 1795610000.1\r\n\r\n" +
		"Event: VarSet\r\nUniqueid: 1795610783.0\r\n\r\n" +
		"Event: Newchannel\r\nUniqueid: 1795610790.2\r\n\r\n" +
		"Event: VarSet\r\nUniqueid: 1795610800.0\r\n\r\n" +
		"Event: PeerStatus\r\nPeer: SIP/200\r\n\r\n" +
		"Event: Hangup\r\nUniqueid: 1795610810.2\r\n\r\n"
	var m Message
	full := NewTranscript(strings.NewReader(in))
	var fullTimes []int64
	for {
		_, tm, err := full.Next(&m)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		fullTimes = append(fullTimes, tm.Unix())
	}
	// Without skipping, the PeerStatus takes the time of the VarSet before it.
	if want := []int64{1795610000, 1795610783, 1795610790, 1795610800, 1795610800, 1795610810}; !slices.Equal(fullTimes, want) {
		t.Fatalf("times %v, want %v", fullTimes, want)
	}
	tr := NewTranscriptOptions(strings.NewReader(in), ReaderOptions{Skip: skipNames("VarSet")})
	for _, want := range []struct{ seq, unix int64 }{{1, 1795610000}, {3, 1795610790}} {
		seq, tm, err := tr.Next(&m)
		if err != nil || int64(seq) != want.seq || tm.Unix() != want.unix {
			t.Fatalf("Next = %d, %v, %v; want %d at %d", seq, tm.Unix(), err, want.seq, want.unix)
		}
	}
	for range 2 { // and it sticks
		if seq, tm, err := tr.Next(&m); !errors.Is(err, ErrSkippedTime) || seq != 0 || !tm.IsZero() {
			t.Fatalf("Next at the PeerStatus = %d, %v, %v; want ErrSkippedTime", seq, tm, err)
		}
	}
}
