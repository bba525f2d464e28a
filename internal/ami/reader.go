package ami

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Defaults for [ReaderOptions].
const (
	DefaultMaxMessageBytes = 64 << 10
	DefaultBufferSize      = 256 << 10
	minMessageBytes        = 64
	maxMessageBytes        = 1 << 30
)

// Errors a [Reader] wraps; test for them with errors.Is.
var (
	// ErrMalformed marks a message with a line that is not a header. The
	// reader skipped the message and can go on.
	ErrMalformed = errors.New("ami: malformed message")
	// ErrOversized marks a message or line longer than MaxMessageBytes. The
	// reader skipped the message without buffering it and can go on.
	ErrOversized = errors.New("ami: oversized message")
	// ErrBanner marks a first line that is not an AMI banner.
	ErrBanner = errors.New("ami: not an AMI banner")
)

// MessageError describes a message the reader rejected and skipped. It wraps
// ErrMalformed or ErrOversized. It is not fatal: the next Next reads the
// following message.
type MessageError struct {
	Seq    int    // 1-based position of the message after the banner
	Offset int64  // offset of the message's first byte in the stream (the banner counts)
	Line   int    // 1-based line within the message where the problem was seen
	Reason string // what was wrong, e.g. "line has no colon"
	Err    error  // ErrMalformed or ErrOversized
}

// Error says which message was rejected, where and why, e.g. "ami: message
// 2 at byte 12 is malformed: line 3: line has no colon".
func (e *MessageError) Error() string {
	kind := "malformed"
	if e.Err == ErrOversized {
		kind = "oversized"
	}
	return "ami: message " + strconv.Itoa(e.Seq) + " at byte " + strconv.FormatInt(e.Offset, 10) +
		" is " + kind + ": line " + strconv.Itoa(e.Line) + ": " + e.Reason
}

// Unwrap returns ErrMalformed or ErrOversized.
func (e *MessageError) Unwrap() error { return e.Err }

// ReaderOptions tunes a [Reader]. The zero value gives the defaults.
type ReaderOptions struct {
	// MaxMessageBytes caps one message, counting every line with its line
	// ending and the closing empty line. A longer message (or a longer
	// line) is skipped with ErrOversized. 0 means DefaultMaxMessageBytes;
	// values are clamped to [64 B, 1 GiB].
	MaxMessageBytes int
	// BufferSize is the size of the read buffer. 0 means
	// DefaultBufferSize; it is raised to MaxMessageBytes if smaller.
	BufferSize int
	// Skip, when set, is asked about every message whose first line is an
	// `Event: <name>` header (the same key and value rules as any header),
	// with the name. When it returns true the message is skipped as fast as
	// possible: the reader only looks for the empty line that ends it, does
	// not check its other lines, does not copy it and does not cap its
	// length; it counts it in ReaderStats.Skipped and Next goes on to the
	// next message. The message still takes a position (Seq). Responses and
	// messages whose first header is not Event are never skipped, nor is a
	// message whose first line is longer than MaxMessageBytes. name aliases
	// the read buffer: it is valid only during the call.
	Skip func(eventName []byte) bool
}

// ReaderStats counts what a [Reader] has read since it was made or Reset.
type ReaderStats struct {
	Messages  int64 // messages returned without error
	Malformed int64 // messages skipped with ErrMalformed
	Oversized int64 // messages skipped with ErrOversized
	Skipped   int64 // messages passed over unread because ReaderOptions.Skip said so
	Bytes     int64 // bytes consumed, banner included
}

// Reader splits an AMI byte stream into messages.
//
// Framing: a message is a run of `Key: Value` lines closed by an empty line.
// Lines end in CRLF; a bare LF is accepted too. Empty lines between messages
// are skipped. The key is trimmed of spaces and tabs; the value is the text
// after the first colon with one leading space removed, the rest kept as is
// (`AccountCode: ` has an empty value). A line without a colon or with an
// empty key makes the whole message malformed.
//
// `Response: Follows` (the Command action of Asterisk 13 and older) is kept
// as one message: its Privilege and ActionID headers are headers, every
// following line up to the `--END COMMAND--` marker (blank lines and lines
// with colons included) becomes a header with the synthetic key "Output" and
// the raw line as value, and the message then ends at the next empty line.
// Text glued in front of the marker (output without a final newline) is an
// Output line of its own. Raw returns the bytes as received.
//
// A Reader is not safe for concurrent use.
type Reader struct {
	br    *bufio.Reader
	max   int
	skip  func(eventName []byte) bool
	seq   int
	stats ReaderStats
	err   error // sticky: the error every later call returns
}

// NewReader returns a Reader reading from r with the given options.
func NewReader(r io.Reader, opts ReaderOptions) *Reader {
	limit := opts.MaxMessageBytes
	if limit <= 0 {
		limit = DefaultMaxMessageBytes
	}
	limit = min(max(limit, minMessageBytes), maxMessageBytes)
	size := opts.BufferSize
	if size <= 0 {
		size = DefaultBufferSize
	}
	size = min(max(size, limit), maxMessageBytes)
	return &Reader{br: bufio.NewReaderSize(r, size), max: limit, skip: opts.Skip}
}

// Reset makes the Reader read from src as if new, keeping its buffer and
// options.
func (r *Reader) Reset(src io.Reader) {
	r.br.Reset(src)
	r.seq = 0
	r.stats = ReaderStats{}
	r.err = nil
}

// Stats returns the counters.
func (r *Reader) Stats() ReaderStats { return r.stats }

// Seq returns the position of the last message Next read or rejected: 1 for
// the first message after the banner, 0 before any.
func (r *Reader) Seq() int { return r.seq }

const bannerPrefix = "Asterisk Call Manager/"

// ReadBanner reads the first line of the stream, which must be an AMI banner
// such as `Asterisk Call Manager/9.0.0`, and returns it without its line
// ending. Call it once, before Next, on a fresh connection. An error wrapping
// ErrBanner is returned for a line that is not a banner; the Reader is then
// unusable (every later call returns that error).
func (r *Reader) ReadBanner() (string, error) {
	if r.err != nil {
		return "", r.err
	}
	line, err := r.br.ReadSlice('\n')
	r.stats.Bytes += int64(len(line))
	switch {
	case err == io.EOF && len(line) == 0:
		r.err = io.EOF
		return "", r.err
	case err == io.EOF:
		r.err = fmt.Errorf("ami: stream ended inside the banner: %w", io.ErrUnexpectedEOF)
		return "", r.err
	case err == bufio.ErrBufferFull:
		r.err = fmt.Errorf("%w: first line is longer than %d bytes", ErrBanner, len(line))
		return "", r.err
	case err != nil:
		r.err = err
		return "", err
	}
	line = trimEOL(line)
	v := line[min(len(bannerPrefix), len(line)):]
	if !bytes.HasPrefix(line, []byte(bannerPrefix)) || len(v) == 0 || len(line) > 200 || !printable(v) {
		r.err = fmt.Errorf("%w: first line %q", ErrBanner, line[:min(len(line), 80)])
		return "", r.err
	}
	return string(line), nil
}

// printable reports whether b is printable ASCII without spaces.
func printable(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// trimEOL removes a trailing LF and then a trailing CR.
func trimEOL(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line
}

const endCommand = "--END COMMAND--"

// Next reads the next message into m, reusing m's storage.
//
// It returns nil for a good message; a *MessageError wrapping ErrMalformed or
// ErrOversized for a message it skipped (not fatal: call Next again); io.EOF
// when the stream ends between messages; an error wrapping
// io.ErrUnexpectedEOF when it ends inside one (after a skipped message
// reached the end, that message's error comes first); or the underlying read
// error. After any error other than a *MessageError, every later call
// returns the same error. On error the contents of m are undefined.
func (r *Reader) Next(m *Message) error {
	for {
		if err := r.next(m); err != errSkipped {
			return err
		}
	}
}

// errSkipped tells Next that next passed over a message Skip chose.
var errSkipped = errors.New("ami: message skipped")

// next reads one message into m, or returns errSkipped after passing over
// one that ReaderOptions.Skip chose.
func (r *Reader) next(m *Message) error {
	if r.err != nil {
		return r.err
	}
	m.reset()
	var (
		started    bool
		start      int64 // stream offset of the message
		lineNo     int
		bad        *MessageError
		follows    bool // inside Response: Follows output
		outStarted bool // an Output line has been seen
		inLong     bool // discarding the rest of an overlong line
	)
	reject := func(kind error, reason string) {
		if bad == nil {
			bad = &MessageError{Seq: r.seq, Offset: start, Line: lineNo, Reason: reason, Err: kind}
		}
	}
	for {
		line, err := r.br.ReadSlice('\n')
		r.stats.Bytes += int64(len(line))
		if err != nil && err != bufio.ErrBufferFull {
			if err != io.EOF {
				r.err = err
				return err
			}
			if !started && !inLong && len(line) == 0 {
				r.err = io.EOF
				return io.EOF
			}
			if !started {
				r.seq++
				start = r.stats.Bytes - int64(len(line))
			}
			r.err = fmt.Errorf("ami: stream ended inside message %d at byte %d: %w", r.seq, start, io.ErrUnexpectedEOF)
			if bad != nil {
				return r.fail(bad)
			}
			return r.err
		}
		if inLong {
			inLong = err != nil
			continue
		}
		if !started {
			if err == nil && len(trimEOL(line)) == 0 {
				continue // an empty line between messages
			}
			started = true
			r.seq++
			start = r.stats.Bytes - int64(len(line))
		}
		lineNo++
		if err == bufio.ErrBufferFull {
			// The line does not fit in the buffer, which holds at least
			// MaxMessageBytes: drop it piece by piece.
			reject(ErrOversized, "line longer than "+strconv.Itoa(r.max)+" bytes")
			inLong = true
			continue
		}
		content := trimEOL(line)
		if lineNo == 1 && r.skip != nil && len(line) <= r.max {
			if name, ok := eventName(content); ok && r.skip(name) {
				return r.skipRest(start)
			}
		}
		if bad == nil && len(m.buf)+len(line) > r.max {
			reject(ErrOversized, "message longer than "+strconv.Itoa(r.max)+" bytes")
		}
		if follows {
			if bytes.HasSuffix(content, []byte(endCommand)) {
				follows = false
				if bad == nil {
					m.appendOutput(line, len(content)-len(endCommand))
				}
				continue
			}
			if bad == nil {
				if colon, ok := followsHeader(content); ok && !outStarted {
					k0, k1 := trimBlanks(content, 0, colon)
					m.appendHeader(line, k0, k1, colon, len(content))
				} else {
					outStarted = true
					m.appendOutput(line, len(content))
				}
			}
			continue
		}
		if len(content) == 0 {
			if bad != nil {
				return r.fail(bad)
			}
			m.buf = append(m.buf, line...)
			r.stats.Messages++
			return nil
		}
		if bad != nil {
			continue
		}
		colon := bytes.IndexByte(content, ':')
		if colon < 0 {
			reject(ErrMalformed, "line has no colon")
			continue
		}
		k0, k1 := trimBlanks(content, 0, colon)
		if k0 == k1 {
			reject(ErrMalformed, "line has an empty key")
			continue
		}
		m.appendHeader(line, k0, k1, colon, len(content))
		if len(m.hdrs) == 1 && equalFold(m.Key(0), "Response") && equalFold(m.Value(0), "Follows") {
			follows = true
		}
	}
}

// eventName returns the value of a first line that is an Event header, cut
// as appendHeader cuts values.
func eventName(content []byte) ([]byte, bool) {
	colon := bytes.IndexByte(content, ':')
	if colon < 0 {
		return nil, false
	}
	k0, k1 := trimBlanks(content, 0, colon)
	if !equalFold(content[k0:k1], "Event") {
		return nil, false
	}
	v := content[colon+1:]
	if len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	return v, true
}

// skipRest passes over the rest of a message Skip chose, whose first line
// has been read: everything up to and including the next empty line, looked
// for line by line in the buffered bytes without copying them. It returns
// errSkipped, or the error that ended the stream (then sticky).
func (r *Reader) skipRest(start int64) error {
	st := atLineStart
	for {
		buf, err := r.br.Peek(max(r.br.Buffered(), 1))
		if len(buf) == 0 {
			if err == io.EOF {
				err = fmt.Errorf("ami: stream ended inside message %d at byte %d: %w", r.seq, start, io.ErrUnexpectedEOF)
			}
			r.err = err
			return err
		}
		end, next := blankLine(buf, st)
		if end >= 0 {
			r.consume(end)
			r.stats.Skipped++
			return errSkipped
		}
		r.consume(len(buf))
		st = next
	}
}

// consume drops n buffered bytes.
func (r *Reader) consume(n int) {
	r.br.Discard(n)
	r.stats.Bytes += int64(n)
}

// Where a scan for the empty line stands.
const (
	atLineStart = iota // just after a line's LF
	afterCR            // just after a line's LF and a CR
	inLine             // inside a line
)

// blankLine looks in b, whose first byte comes in state st, for the first
// empty line ("\n" or "\r\n" after a line's LF). It returns the index just
// past that line's LF, or -1 and the state after the last byte of b.
func blankLine(b []byte, st int) (int, int) {
	p := 0
	for p < len(b) {
		switch st {
		case atLineStart:
			switch b[p] {
			case '\n':
				return p + 1, st
			case '\r':
				st = afterCR
				p++
				continue
			}
		case afterCR:
			if b[p] == '\n' {
				return p + 1, st
			}
		}
		i := bytes.IndexByte(b[p:], '\n')
		if i < 0 {
			return -1, inLine
		}
		p += i + 1
		st = atLineStart
	}
	return -1, st
}

// fail counts a skipped message and returns its error.
func (r *Reader) fail(e *MessageError) error {
	if e.Err == ErrOversized {
		r.stats.Oversized++
	} else {
		r.stats.Malformed++
	}
	return e
}

// followsHeader reports whether a line of a Response: Follows message is
// one of the headers Asterisk writes before the command output, and where its
// colon is.
func followsHeader(content []byte) (int, bool) {
	colon := bytes.IndexByte(content, ':')
	if colon < 0 {
		return 0, false
	}
	k0, k1 := trimBlanks(content, 0, colon)
	k := content[k0:k1]
	return colon, equalFold(k, "Privilege") || equalFold(k, "ActionID")
}

// trimBlanks returns the bounds of b[i:j] without leading and trailing
// spaces and tabs.
func trimBlanks(b []byte, i, j int) (int, int) {
	for i < j && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	for j > i && (b[j-1] == ' ' || b[j-1] == '\t') {
		j--
	}
	return i, j
}

// appendHeader appends a header line whose key is line[k0:k1], whose first
// colon is at colon and whose text (without line ending) is line[:end].
func (m *Message) appendHeader(line []byte, k0, k1, colon, end int) {
	base := len(m.buf)
	m.buf = append(m.buf, line...)
	v0 := colon + 1
	if v0 < end && line[v0] == ' ' {
		v0++
	}
	m.hdrs = append(m.hdrs, span{int32(base + k0), int32(base + k1), int32(base + v0), int32(base + end)})
}

// appendOutput appends a line of command output whose text is line[:end]. An
// empty text before the --END COMMAND-- marker (end == 0 there) adds no
// header; any other line, even a blank one, does.
func (m *Message) appendOutput(line []byte, end int) {
	base := len(m.buf)
	m.buf = append(m.buf, line...)
	if end == 0 && bytes.HasSuffix(trimEOL(line), []byte(endCommand)) {
		return
	}
	m.hdrs = append(m.hdrs, span{-1, -1, int32(base), int32(base + end)})
}
