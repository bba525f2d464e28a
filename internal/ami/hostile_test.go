package ami

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// Hostile input through the Reader: whatever the peer sends, memory stays
// bounded by the message cap, oversized messages are skipped and counted,
// and the stream goes on.

// memBound is the generous bound on what reading hostile input may allocate
// or keep.
const memBound = 16 << 20

// measure runs f and returns the bytes it allocated and the growth of the
// live heap (after a GC) it caused.
func measure(f func()) (allocated uint64, retained int64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	allocated = after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)
	return allocated, int64(after.HeapInuse) - int64(before.HeapInuse)
}

// gen yields the bytes of a stream that next appends to a reused buffer,
// one piece at a time, without ever holding the whole stream and without
// allocating once the buffer has grown.
type gen struct {
	next func(dst []byte) []byte // nil at the end
	buf  []byte
	cur  []byte
}

func (g *gen) Read(p []byte) (int, error) {
	for len(g.cur) == 0 {
		b := g.next(g.buf[:0])
		if b == nil {
			return 0, io.EOF
		}
		g.buf, g.cur = b, b
	}
	n := copy(p, g.cur)
	g.cur = g.cur[n:]
	return n, nil
}

// repeatReader yields pattern over and over, n bytes in all.
func repeatReader(pattern string, n int64) io.Reader {
	block := []byte(strings.Repeat(pattern, max(1, (64<<10)/len(pattern))))
	return io.LimitReader(&gen{next: func([]byte) []byte { return block }}, n)
}

// Messages of several megabytes, whether made of many ordinary lines or of
// one long value, are skipped under the default cap without buffering them,
// and the next message is read; with a cap raised above them they are
// accepted, and memory follows the cap, not the stream.
func TestHostileMegabyteMessages(t *testing.T) {
	const size = 6 << 20
	shapes := map[string]func() io.Reader{
		"many lines": func() io.Reader {
			const line = "CallerIDName: $(reboot);rm -rf / `id` \xff\xfe|(.*)\r\n"
			return repeatReader(line, size-size%int64(len(line)))
		},
		"one line": func() io.Reader {
			return io.MultiReader(strings.NewReader("CallerIDName: "), repeatReader("A.*|$`;\xff", size), strings.NewReader("\r\n"))
		},
		"many keys": func() io.Reader {
			i, n := 0, 0
			return &gen{next: func(b []byte) []byte {
				if n >= size {
					return nil
				}
				i++
				b = append(strconv.AppendInt(append(b, 'K'), int64(i), 10), ": v"...)
				b = append(strconv.AppendInt(b, int64(i), 10), "\r\n"...)
				n += len(b)
				return b
			}}
		},
	}
	for name, body := range shapes {
		stream := func() io.Reader {
			// Every body ends with a line end.
			return io.MultiReader(strings.NewReader("Event: Newchannel\r\nChannel: SIP/200-0000000a\r\n"), body(),
				strings.NewReader("X: end\r\n\r\nEvent: After\r\n\r\n"))
		}
		t.Run(name+"/default cap", func(t *testing.T) {
			var got []string
			var st ReaderStats
			alloc, kept := measure(func() {
				r := NewReader(stream(), ReaderOptions{})
				got = descs(readAll(t, r))
				st = r.Stats()
			})
			if len(got) != 3 || got[0] != "!oversized" || got[1] != "Event=After" || got[2] != "!EOF" {
				t.Fatalf("got %q", got)
			}
			if st.Oversized != 1 || st.Messages != 1 || st.Bytes < size {
				t.Errorf("stats %+v", st)
			}
			if alloc > memBound || kept > memBound {
				t.Errorf("reading %d bytes allocated %d, kept %d", size, alloc, kept)
			}
		})
		t.Run(name+"/raised cap", func(t *testing.T) {
			const limit = 8 << 20
			var m Message
			var err error
			alloc, kept := measure(func() {
				r := NewReader(stream(), ReaderOptions{MaxMessageBytes: limit})
				err = r.Next(&m)
			})
			if err != nil {
				t.Fatalf("a %d-byte message under a %d-byte cap: %v", size, limit, err)
			}
			if m.Get("Channel") != "SIP/200-0000000a" || m.Get("X") != "end" || len(m.Raw()) < size {
				t.Errorf("message of %d bytes, %d headers", len(m.Raw()), m.Len())
			}
			// What stays is the message and its index (the reader and its
			// 8 MiB buffer are gone): about twice the message. Growing them
			// by append allocates a few times that in all, linear in the
			// message, never more.
			if kept > 3*limit || alloc > 16*size {
				t.Errorf("reading a %d-byte message allocated %d bytes, kept %d", size, alloc, kept)
			}
			var ev Event
			if !Decode(&m, &ev) || ev.Channel != "SIP/200-0000000a" {
				t.Errorf("Decode: %+v", ev)
			}
		})
	}
}

// Endless lines with no LF, of bytes other than the ones the existing test
// uses: CRs only (a CR alone ends nothing), NULs and non-UTF-8, inside a
// Response: Follows, and as the banner.
func TestHostileEndlessLines(t *testing.T) {
	const size = 32 << 20
	for _, tc := range []struct {
		name, head, pattern string
	}{
		{"CRs", "Event: X\r\nCallerIDNum: ", "\r"},
		{"NULs and 0xff", "Event: X\r\nAccountID: ", "\x00\xff\xfe"},
		{"colons", "Event: X\r\n", "Channel: SIP/200-0000000a:"},
		{"command output", "Response: Follows\r\nPrivilege: Command\r\n", "--END COMMAND-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			var st ReaderStats
			alloc, kept := measure(func() {
				r := NewReader(io.MultiReader(strings.NewReader(tc.head), repeatReader(tc.pattern, size),
					strings.NewReader("\r\n\r\nEvent: After\r\n\r\n")), ReaderOptions{})
				got = descs(readAll(t, r))
				st = r.Stats()
			})
			want := "!oversized,Event=After,!EOF"
			if tc.name == "command output" {
				// The output never ends (the marker never comes whole), so
				// the rest of the stream is output of the skipped message.
				want = "!oversized,!unexpectedEOF"
			}
			if strings.Join(got, ",") != want {
				t.Errorf("got %q, want %q", got, want)
			}
			if st.Bytes < size {
				t.Errorf("stats %+v", st)
			}
			if alloc > memBound || kept > memBound {
				t.Errorf("an endless %q line of %d bytes allocated %d, kept %d", tc.pattern, size, alloc, kept)
			}
		})
	}
	t.Run("banner", func(t *testing.T) {
		var err error
		alloc, _ := measure(func() {
			_, err = NewReader(repeatReader("Asterisk Call Manager/", size), ReaderOptions{}).ReadBanner()
		})
		if !errors.Is(err, ErrBanner) {
			t.Errorf("endless banner: %v", err)
		}
		if alloc > memBound {
			t.Errorf("an endless banner allocated %d bytes", alloc)
		}
	})
}

// 250,000 messages, each with keys and values never seen before: the
// reader keeps nothing per key and reuses its storage, so reading and
// decoding them allocates only what Decode copies out of the events the
// guard needs (about 75 KB here). The bound, 16 bytes a message, shows
// anything allocated or kept per message or per key.
func TestHostileDistinctKeys(t *testing.T) {
	const n = 250_000
	i := 0
	stream := &gen{next: func(b []byte) []byte {
		if i >= n {
			return nil
		}
		i++
		s := int64(i)
		if i%1000 == 0 { // now and then an event the guard decodes
			b = strconv.AppendInt(append(b, "Event: Hangup\r\nChannel: SIP/k"...), s, 10)
			b = strconv.AppendInt(append(b, "-0000000a\r\nUniqueid: "...), s, 10)
			return append(b, "\r\nCause: 1\r\n\r\n"...)
		}
		b = strconv.AppendInt(append(b, "Event: E"...), s, 10)
		b = strconv.AppendInt(append(b, "\r\nKey"...), s, 10)
		b = strconv.AppendInt(append(b, ": value"...), s, 10)
		b = strconv.AppendInt(append(b, "\r\nX-"...), s, 10)
		b = strconv.AppendInt(append(b, '-'), s, 10)
		b = strconv.AppendInt(append(b, ':'), s, 10)
		return append(b, "\r\n\r\n"...)
	}}
	var (
		msgs, decoded int
		err           error
	)
	alloc, kept := measure(func() {
		r := NewReader(stream, ReaderOptions{})
		var (
			m  Message
			ev Event
		)
		for {
			if err = r.Next(&m); err != nil {
				break
			}
			msgs++
			if Decode(&m, &ev) {
				decoded++
			}
		}
	})
	if err != io.EOF || msgs != n || decoded != n/1000 {
		t.Fatalf("read %d messages, decoded %d, ended with %v", msgs, decoded, err)
	}
	if bound := uint64(16 * n); alloc > bound || kept > int64(bound) {
		t.Errorf("%d messages of distinct keys allocated %d bytes, kept %d", n, alloc, kept)
	}
}

// A message of 100,000 headers is rejected under the default cap and
// accepted (every header indexed, memory proportional to it) under a cap
// it fits.
func TestHostileHundredThousandHeaders(t *testing.T) {
	const headers = 100_000
	var b bytes.Buffer
	b.WriteString("Event: Newchannel\r\n")
	for i := range headers {
		fmt.Fprintf(&b, "H%d: %d\r\n", i, i)
	}
	b.WriteString("Channel: SIP/200-0000000a\r\n\r\nEvent: After\r\n\r\n")
	data := b.Bytes()

	var m Message
	r := NewReader(bytes.NewReader(data), ReaderOptions{})
	alloc, _ := measure(func() {
		err := r.Next(&m)
		var me *MessageError
		if !errors.As(err, &me) || me.Err != ErrOversized {
			t.Errorf("%d headers under the default cap: %v", headers, err)
		}
	})
	if err := r.Next(&m); err != nil || m.Get("Event") != "After" {
		t.Errorf("after the rejected message: %v", err)
	}
	if alloc > memBound || cap(m.hdrs) > DefaultMaxMessageBytes {
		t.Errorf("rejecting %d headers allocated %d bytes, index of %d", headers, alloc, cap(m.hdrs))
	}

	r = NewReader(bytes.NewReader(data), ReaderOptions{MaxMessageBytes: 4 << 20})
	alloc, _ = measure(func() {
		if err := r.Next(&m); err != nil {
			t.Fatalf("%d headers under a 4 MiB cap: %v", headers, err)
		}
	})
	if m.Len() != headers+2 || m.Get("H99999") != "99999" || m.Get("Channel") != "SIP/200-0000000a" {
		t.Errorf("%d headers, H99999=%q", m.Len(), m.Get("H99999"))
	}
	var ev Event
	if !Decode(&m, &ev) || ev.Channel != "SIP/200-0000000a" {
		t.Errorf("Decode: %+v", ev)
	}
	if alloc > memBound {
		t.Errorf("reading %d bytes of headers allocated %d", len(data), alloc)
	}

}

// Values an attacker shapes (caller id, account, dialled number) with CR,
// LF, NUL, regex, shell metacharacters and non-UTF-8: a value with a control
// character never reaches the wire in an action (AppendAction refuses it,
// writing nothing), any other reads back as exactly one header, and the
// names ParseChannel accepts never carry a control character.
func TestHostileValuesInActions(t *testing.T) {
	evil := []string{"a\r\nChannel: SIP/201-0000000b", "x\ry", "x\ny", "\x00", "$(reboot)", ";rm -rf /", "`id`",
		"\xff\xfe", "(.*)", "a|b", "^.*$", "\u2028", "a\tb", "\x7f"}
	for _, v := range evil {
		control := strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f })
		a := Action{Name: "Hangup", Headers: []Header{{"Channel", "SIP/200-0000000a"}, {"Cause", v}}}
		dst := []byte("kept")
		out, err := AppendAction(dst, a, "t-1")
		if control {
			var ue *UnsafeError
			if !errors.Is(err, ErrUnsafe) || !errors.As(err, &ue) || ue.Key != "Cause" || string(out) != "kept" {
				t.Errorf("%q: AppendAction = %q, %v; want ErrUnsafe on Cause and nothing written", v, out, err)
			}
		} else {
			var m Message
			if err != nil {
				t.Errorf("%q: %v", v, err)
			} else if err := NewReader(bytes.NewReader(out[len(dst):]), ReaderOptions{}).Next(&m); err != nil ||
				m.Len() != 4 || m.Get("Cause") != v || m.Get("Channel") != "SIP/200-0000000a" {
				t.Errorf("%q: the action reads back as %q (%v)", v, describe(&m), err)
			}
		}
		if _, ok := ParseChannel("SIP/" + v + "-0000000a"); ok && control {
			t.Errorf("ParseChannel accepted a name with a control character: %q", v)
		}
		if ValidName(v) || ValidChannel("SIP/"+v+"-0000000a") && strings.ContainsAny(v, "\r\n\x00") {
			t.Errorf("%q passed validation", v)
		}
	}
}
