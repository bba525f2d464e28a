package ami

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// Transcript reads a recorded AMI stream in the fixtures' `.ami` format: the
// banner line, then messages exactly as read from the socket, each of which
// may carry a `TimeReceived: <RFC 3339, UTC, microseconds>` header added by
// the recorder.
//
// A Transcript is not safe for concurrent use.
type Transcript struct {
	r          *Reader
	banner     string
	bannerRead bool
	prev       time.Time
	// prevSkipped is the reader's Skipped count when prev was set.
	prevSkipped int64
	err         error // sticky ErrSkippedTime
}

// ErrSkippedTime is returned by [Transcript.Next], when Skip is set, for a
// message that has no time of its own after messages were skipped since the
// last message that had one: one of them may have carried the time the
// message would take. The Transcript cannot go on; read the stream again
// without Skip.
var ErrSkippedTime = errors.New("ami: a message without a time of its own follows skipped messages")

// NewTranscript returns a Transcript reading r with the default
// [ReaderOptions].
func NewTranscript(r io.Reader) *Transcript {
	return NewTranscriptOptions(r, ReaderOptions{})
}

// NewTranscriptOptions returns a Transcript reading r with opts; with Skip
// set, see [ErrSkippedTime].
func NewTranscriptOptions(r io.Reader, opts ReaderOptions) *Transcript {
	return &Transcript{r: NewReader(r, opts)}
}

// Reset makes t read from r as if new, keeping its buffers and options.
func (t *Transcript) Reset(r io.Reader) {
	t.r.Reset(r)
	t.banner, t.bannerRead, t.prev, t.prevSkipped, t.err = "", false, time.Time{}, 0, nil
}

// Banner returns the banner line, reading it first if Next has not.
func (t *Transcript) Banner() (string, error) {
	if !t.bannerRead {
		b, err := t.r.ReadBanner()
		if err != nil {
			return "", err
		}
		t.banner, t.bannerRead = b, true
	}
	return t.banner, nil
}

// Stats returns the counters of the underlying [Reader].
func (t *Transcript) Stats() ReaderStats { return t.r.Stats() }

// Next reads the next message into m and returns its position and time.
//
// seq is the 1-based position of the message after the banner, counting
// every message, rejected ones included (the login response is 1). The time
// is, in order of preference: TimeReceived (RFC 3339), EventTV
// (`2006-01-02T15:04:05.000-0700`), the epoch seconds of Uniqueid
// (`1795610783.0` or `name-1795610783.0`), else the time of the previous
// message (zero for the first). A header that is present but does not parse
// is passed over for the next one. Times are in UTC.
//
// A rejected message (*MessageError, wrapping ErrMalformed or ErrOversized)
// is returned with its seq and the previous time and is not fatal. Other
// errors (io.EOF at the end, a bad banner, io.ErrUnexpectedEOF,
// ErrSkippedTime) are fatal and come with seq 0 and a zero time.
//
// Messages skipped by ReaderOptions.Skip count in seq, but their times are
// not read: a message that would take its time from a skipped one gets
// ErrSkippedTime instead, and a rejected message comes with the time of the
// last message read.
func (t *Transcript) Next(m *Message) (seq int, tm time.Time, err error) {
	if t.err != nil {
		return 0, time.Time{}, t.err
	}
	if !t.bannerRead {
		if _, err := t.Banner(); err != nil {
			return 0, time.Time{}, err
		}
	}
	if err := t.r.Next(m); err != nil {
		if me := (*MessageError)(nil); errors.As(err, &me) {
			return me.Seq, t.prev, err
		}
		return 0, time.Time{}, err
	}
	if tm, ok := messageTime(m); ok {
		t.prev, t.prevSkipped = tm, t.r.stats.Skipped
	} else if t.r.stats.Skipped != t.prevSkipped {
		t.err = fmt.Errorf("message %d: %w", t.r.Seq(), ErrSkippedTime)
		return 0, time.Time{}, t.err
	}
	return t.r.Seq(), t.prev, nil
}

// messageTime returns the time a message carries, if any.
func messageTime(m *Message) (time.Time, bool) {
	var received, eventTV, uniqueid []byte
	for i, h := range m.hdrs {
		switch int(h.k1 - h.k0) {
		case len("TimeReceived"):
			if received == nil && m.keyIs(h, "TimeReceived") {
				received = m.Value(i)
			}
		case len("EventTV"):
			if eventTV == nil && m.keyIs(h, "EventTV") {
				eventTV = m.Value(i)
			}
		case len("Uniqueid"):
			if uniqueid == nil && m.keyIs(h, "Uniqueid") {
				uniqueid = m.Value(i)
			}
		}
	}
	if t, ok := parseTimestamp(received); ok {
		return t, true
	}
	if t, ok := parseTimestamp(eventTV); ok {
		return t, true
	}
	return uniqueidTime(uniqueid)
}

// parseTimestamp parses `YYYY-MM-DDTHH:MM:SS[.fraction]` followed by `Z`,
// `±HH:MM` or `±HHMM` (RFC 3339, and the EventTV layout
// `2006-01-02T15:04:05.000-0700`) into a UTC time, without allocating.
func parseTimestamp(b []byte) (time.Time, bool) {
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return time.Time{}, false
	}
	year, ok1 := atoi(b[0:4])
	month, ok2 := atoi(b[5:7])
	day, ok3 := atoi(b[8:10])
	hour, ok4 := atoi(b[11:13])
	minute, ok5 := atoi(b[14:16])
	sec, ok6 := atoi(b[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || month < 1 || month > 12 || day < 1 ||
		hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	rest, nsec := b[19:], 0
	if rest[0] == '.' {
		n := 1
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		digits := rest[1:n]
		if len(digits) == 0 || len(digits) > 9 {
			return time.Time{}, false
		}
		nsec, _ = atoi(digits)
		for range 9 - len(digits) {
			nsec *= 10
		}
		rest = rest[n:]
	}
	var offset int // seconds east of UTC
	switch {
	case len(rest) == 1 && rest[0] == 'Z':
	case (len(rest) == 5 || len(rest) == 6 && rest[3] == ':') && (rest[0] == '+' || rest[0] == '-'):
		hh, okh := atoi(rest[1:3])
		mm, okm := atoi(rest[len(rest)-2:])
		if !okh || !okm || hh > 23 || mm > 59 {
			return time.Time{}, false
		}
		offset = hh*3600 + mm*60
		if rest[0] == '-' {
			offset = -offset
		}
	default:
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	if t.Day() != day { // e.g. February 30th
		return time.Time{}, false
	}
	return t.Add(-time.Duration(offset) * time.Second), true
}

// uniqueidTime returns the epoch seconds of a Uniqueid `<secs>.<seq>` or
// `<systemname>-<secs>.<seq>` as a UTC time.
func uniqueidTime(b []byte) (time.Time, bool) {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '-' {
			b = b[i+1:]
			break
		}
	}
	dot := -1
	for i, c := range b {
		if c == '.' {
			dot = i
			break
		}
	}
	if dot < 1 || dot > 12 || dot == len(b)-1 {
		return time.Time{}, false
	}
	secs, ok := atoi(b[:dot])
	if _, ok2 := atoi(b[dot+1:]); !ok || !ok2 {
		return time.Time{}, false
	}
	return time.Unix(int64(secs), 0).UTC(), true
}

// atoi parses 1 to 18 decimal digits.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// RecordingStart is the Event of the message `guard run --record` writes
// each time it starts recording into a file, new or appended to:
//
//	Event: AstguardRecordingStart
//	Banner: Asterisk Call Manager/9.0.0
//	TimeReceived: 2026-11-25T12:46:54.751740Z
//
// Banner is the banner of the AMI session whose messages follow, and
// TimeReceived the time of its first message. What follows the marker is a
// new AMI session of a restarted guard: a replay forgets the calls it had
// seen live, as a reconnect does, and counts positions afresh.
const RecordingStart = "AstguardRecordingStart"
