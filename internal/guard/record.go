package guard

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/fsafe"
)

// recorder writes what the guard receives in the transcript format of the
// fixtures (banner line, messages, each with TimeReceived last), so a day of
// a real PBX can be replayed with `guard replay` to tune thresholds. The file
// is rotated by size: FILE, then FILE.1 ... FILE.<keep>.
//
// An existing recording is appended to, never truncated: a restarted guard
// goes on where the last one stopped, after an ami.RecordingStart marker
// that tells `guard replay` a new AMI session begins. The file is opened as
// a private file (fsafe.OpenPrivate: never through a symlink, a regular file
// of the guard's user with mode 0600), since it holds the PBX's traffic.
//
// Each message is written as its bytes arrived (ami.Message.Raw: headers in
// order, repeated keys kept), replies included, before any filtering.
type recorder struct {
	path     string
	maxBytes int64
	keep     int
	banner   func() string

	f    *os.File
	w    *bufio.Writer
	size int64
}

// timeReceivedLen is the length of the TimeReceived line and the empty line
// that close every recorded message.
const timeReceivedLen = len("TimeReceived: 2006-01-02T15:04:05.000000Z\r\n\r\n")

// newRecorder checks the file can be recorded into: creatable, or an
// existing recording. It is opened for good at the first message, when the
// session's banner is known.
func newRecorder(path string, maxBytes int64, keep int, banner func() string) (*recorder, error) {
	f, _, err := openRecording(path)
	if err != nil {
		return nil, err
	}
	f.Close()
	return &recorder{path: path, maxBytes: maxBytes, keep: keep, banner: banner}, nil
}

// openRecording opens path to append to, creating it (mode 0600) when
// missing, and returns its size. A file that is not empty must begin with
// an AMI banner: anything else is not a recording and is left alone.
func openRecording(path string) (*os.File, int64, error) {
	f, err := fsafe.OpenPrivate(path, os.O_RDWR|os.O_APPEND|os.O_CREATE)
	if err != nil {
		return nil, 0, fmt.Errorf("recording: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if fi.Size() > 0 {
		head := make([]byte, len(bannerPrefix))
		if _, err := f.ReadAt(head, 0); err != nil || string(head) != bannerPrefix {
			f.Close()
			return nil, 0, fmt.Errorf("recording: %s is not an AMI transcript (it does not begin with %q): move it away or record into another file", path, bannerPrefix)
		}
	}
	return f, fi.Size(), nil
}

const bannerPrefix = "Asterisk Call Manager/"

// write appends one message: raw is the message's header lines and closing
// empty line, as ami.Message.Raw returns it.
func (r *recorder) write(raw []byte, at time.Time) error {
	if len(raw) < 2 {
		return nil
	}
	switch {
	case r.f == nil:
		if err := r.start(at); err != nil {
			return err
		}
	case r.maxBytes > 0 && r.size >= r.maxBytes:
		// Rotate before writing, so no file is ever left with a banner only.
		if err := r.rotate(); err != nil {
			return err
		}
	}
	body := raw[:len(raw)-2] // without the closing empty line
	r.fit(len(body) + timeReceivedLen)
	n1, err := r.w.Write(body)
	if err != nil {
		return err
	}
	n2, err := fmt.Fprintf(r.w, "TimeReceived: %s\r\n\r\n", at.UTC().Format("2006-01-02T15:04:05.000000Z"))
	if err != nil {
		return err
	}
	r.size += int64(n1 + n2)
	return nil
}

// fit flushes the buffer when a message of n bytes would not fit in what is
// left of it, so every write to the file ends at a message's end: a guard
// killed between two flushes leaves whole messages only.
func (r *recorder) fit(n int) {
	if r.w.Buffered() > 0 && r.w.Available() < n {
		_ = r.w.Flush() // an error stays in the writer and comes back from Write
	}
}

// start opens the recording at the guard's first message: appended to (a
// file already at its size limit is rotated away first), then marked with
// the start of a new AMI session.
func (r *recorder) start(at time.Time) error {
	if err := r.open(); err != nil {
		return err
	}
	if r.maxBytes > 0 && r.size >= r.maxBytes {
		if err := r.rotate(); err != nil {
			return err
		}
	}
	banner := strings.Map(func(c rune) rune {
		if c == '\r' || c == '\n' {
			return -1
		}
		return c
	}, r.bannerLine())
	return r.write([]byte("Event: "+ami.RecordingStart+"\r\nBanner: "+banner+"\r\n\r\n"), at)
}

func (r *recorder) bannerLine() string {
	if b := r.banner(); b != "" {
		return b
	}
	return bannerPrefix + "unknown"
}

// open opens the file for appending: a new or empty file gets the banner
// line; an existing one whose last message was cut off (a guard killed in
// the middle of a write, or a disk that filled up) gets that message closed
// with a line that makes the reader reject it, so the piece is never read as
// an event nor glued to the next message.
func (r *recorder) open() error {
	f, size, err := openRecording(r.path)
	if err != nil {
		return err
	}
	r.f, r.w, r.size = f, bufio.NewWriterSize(f, 256<<10), size
	var head string
	if size == 0 {
		head = r.bannerLine() + "\r\n"
	} else if head, err = sealTail(f, size); err != nil {
		return err
	}
	n, err := r.w.WriteString(head)
	r.size += int64(n)
	return err
}

// tornMark is a line without a colon: the reader rejects the message it
// ends as malformed.
const tornMark = "ASTGUARD RECORDING INTERRUPTED HERE"

// sealTail returns what to append to an existing recording of size bytes
// so that it ends between messages: nothing when it already does (or holds
// the banner line only), else the end of the cut line, tornMark and an
// empty line.
func sealTail(f *os.File, size int64) (string, error) {
	tail := make([]byte, min(size, 256))
	if _, err := f.ReadAt(tail, size-int64(len(tail))); err != nil && err != io.EOF {
		return "", err
	}
	switch {
	case bytes.HasSuffix(tail, []byte("\n\r\n")), bytes.HasSuffix(tail, []byte("\n\n")):
		return "", nil // after a message's closing empty line
	case int64(len(tail)) == size && bytes.IndexByte(tail, '\n') == len(tail)-1:
		return "", nil // the banner line only
	}
	var end string
	switch tail[len(tail)-1] {
	case '\n':
	case '\r':
		end = "\n"
	default:
		end = "\r\n"
	}
	return end + tornMark + "\r\n\r\n", nil
}

func (r *recorder) rotate() error {
	if err := r.close(); err != nil {
		return err
	}
	for i := r.keep; i >= 1; i-- {
		from := r.path
		if i > 1 {
			from = fmt.Sprintf("%s.%d", r.path, i-1)
		}
		// Lstat, not Stat: the rename moves a link, never its target.
		if _, err := os.Lstat(from); err == nil {
			if err := os.Rename(from, fmt.Sprintf("%s.%d", r.path, i)); err != nil {
				return err
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return r.open()
}

func (r *recorder) flush() error {
	if r.w == nil {
		return nil
	}
	return r.w.Flush()
}

func (r *recorder) close() error {
	if r.f == nil {
		return nil
	}
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f, r.w = nil, nil
	return err
}
