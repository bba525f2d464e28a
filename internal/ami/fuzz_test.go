package ami

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// addSeeds adds the literal frames and pieces of every fixture transcript,
// cut at message boundaries and in the middle of messages.
func addSeeds(f *testing.F) {
	for _, s := range []string{
		splitCorpus,
		crlf(frameDialBegin), crlf(frameInvalidPassword), crlf(framePeerStatus), crlf(frameVarSet),
		"Asterisk Call Manager/9.0.0\r\nResponse: Success\r\nMessage: Authentication accepted\r\n\r\n",
		"Event: Dial\nSubEvent: Begin\nChannel: SIP/200-00000001\nUniqueID: 1.2\nDialstring: x\n\n",
		"Event: ContactStatus\r\nURI: sip:[2001:db8::1]:5060\r\nEndpointName: 301\r\n\r\n",
		"Response: Follows\r\nPrivilege: Command\r\nx\r\n\r\n--END COMMAND--\r\n\r\n",
		"Event: A\r\n" + strings.Repeat("K: v\r\n", 40) + "\r\n",
	} {
		f.Add([]byte(s))
	}
	for _, name := range []string{"attack-mixed.ami", "after-rotation.ami", "hangup-events.ami", "pjsip-bruteforce.ami", "asterisk11-attack-sip.ami"} {
		data := readFixture(f, name)
		for i, off := 0, 0; i < 6 && off < len(data); i++ {
			end := min(off+1500+i*300, len(data))
			f.Add(data[off:end])
			off = end + 7919 // skip ahead, landing anywhere
		}
	}
}

var fuzzOptions = []ReaderOptions{{}, {MaxMessageBytes: 128, BufferSize: 16}}

func FuzzReader(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, opts := range fuzzOptions {
			r := NewReader(bytes.NewReader(data), opts)
			want := readAll(t, r)
			st := r.Stats()
			if n := int64(len(want) - 1); st.Messages+st.Malformed+st.Oversized != n {
				t.Fatalf("stats %+v for %d results", st, len(want))
			}
			if st.Bytes != int64(len(data)) {
				t.Fatalf("consumed %d of %d bytes", st.Bytes, len(data))
			}
			limit := r.max
			for _, res := range want {
				if res.desc != "" && res.desc[0] == '!' {
					continue
				}
				if len(res.raw) > limit || !strings.HasSuffix(res.raw, "\n") {
					t.Fatalf("raw message of %d bytes (cap %d): %q", len(res.raw), limit, res.raw)
				}
				// A good message read again on its own is the same.
				again := readAll(t, NewReader(strings.NewReader(res.raw), opts))
				if len(again) != 2 || again[0] != res || again[1].desc != "!EOF" {
					t.Fatalf("re-reading %q gave %v", res.raw, again)
				}
			}
			got := readAll(t, NewReader(iotest.OneByteReader(bytes.NewReader(data)), opts))
			if !equalResults(got, want) {
				t.Fatalf("one byte at a time:\n%v\nat once:\n%v", got, want)
			}
			checkSkip(t, data, opts)
			// The message buffer never grows past the cap.
			var m Message
			r = NewReader(bytes.NewReader(data), opts)
			for {
				err := r.Next(&m)
				if cap(m.buf) > 2*limit+64 {
					t.Fatalf("message buffer grew to %d bytes (cap %d)", cap(m.buf), limit)
				}
				var me *MessageError
				if err != nil && !errors.As(err, &me) {
					break
				}
			}
		}
	})
}

// entry is one result of Next with the reader's position after it and the
// first line of the message (nil for an error that ends the stream).
type entry struct {
	res   result
	seq   int
	first []byte
}

func readEntries(t *testing.T, src io.Reader, data []byte, opts ReaderOptions) ([]entry, ReaderStats) {
	r := NewReader(src, opts)
	var (
		out []entry
		m   Message
	)
	for i := 0; ; i++ {
		if i > 1<<20 {
			t.Fatal("reader does not stop")
		}
		err := r.Next(&m)
		e := entry{seq: r.Seq()}
		var me *MessageError
		switch {
		case err == nil:
			e.res = result{describe(&m), string(m.Raw())}
			e.first = bytes.Clone(firstLine(m.Raw()))
		case errors.As(err, &me):
			e.res = result{desc: errClass(err)}
			e.first = firstLine(data[me.Offset:])
		default:
			e.res = result{desc: errClass(err)}
			return append(out, e), r.Stats()
		}
		out = append(out, e)
	}
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i+1]
	}
	return b
}

// skippedBy reports whether a message whose first line is first is one Skip
// is asked about and skips: a complete line within the cap, an Event header.
func skippedBy(first []byte, limit int, skip func([]byte) bool) bool {
	if len(first) == 0 || first[len(first)-1] != '\n' || len(first) > limit {
		return false
	}
	line := bytes.TrimSuffix(bytes.TrimSuffix(first, []byte("\n")), []byte("\r"))
	key, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || !strings.EqualFold(string(bytes.Trim(key, " \t")), "Event") {
		return false
	}
	return skip(bytes.TrimPrefix(value, []byte(" ")))
}

// checkSkip checks that with Skip the reader returns exactly what it returns
// without, less the messages Skip chose, at the same positions, whether the
// bytes come at once or in pieces.
func checkSkip(t *testing.T, data []byte, opts ReaderOptions) {
	plain, _ := readEntries(t, bytes.NewReader(data), data, opts)
	limit := NewReader(nil, opts).max
	for _, v := range []struct {
		name string
		skip func([]byte) bool
		// slow delivers the bytes in pieces, to cut the messages anywhere.
		slow func(io.Reader) io.Reader
	}{
		{"all", func([]byte) bool { return true }, iotest.HalfReader},
		{"even length", func(n []byte) bool { return len(n)%2 == 0 }, iotest.OneByteReader},
	} {
		name, skip := v.name, v.skip
		opts.Skip = skip
		var want []entry
		removed := 0
		for _, e := range plain {
			if e.first != nil && skippedBy(e.first, limit, skip) {
				removed++
				continue
			}
			want = append(want, e)
		}
		got, st := readEntries(t, bytes.NewReader(data), data, opts)
		if len(got) != len(want) {
			t.Fatalf("skip %s: %d results, want %d:\n%v\n%v", name, len(got), len(want), got, want)
		}
		for i := range got {
			if got[i].res != want[i].res || got[i].seq != want[i].seq {
				t.Fatalf("skip %s: result %d is %v at %d, want %v at %d", name, i, got[i].res, got[i].seq, want[i].res, want[i].seq)
			}
		}
		if st.Messages+st.Malformed+st.Oversized != int64(len(got)-1) || st.Bytes != int64(len(data)) {
			t.Fatalf("skip %s: stats %+v for %d results of %d bytes", name, st, len(got), len(data))
		}
		// A skipped-by-name message cut by the end of the stream is
		// reported as the end, not counted as skipped.
		if st.Skipped != int64(removed) && st.Skipped != int64(removed-1) {
			t.Fatalf("skip %s: %d skipped, %d removed", name, st.Skipped, removed)
		}
		slow := readAll(t, NewReader(v.slow(bytes.NewReader(data)), opts))
		for i := range slow {
			if i >= len(got) || slow[i] != got[i].res {
				t.Fatalf("skip %s: in pieces:\n%v\nat once:\n%v", name, slow, got)
			}
		}
		if len(slow) != len(got) {
			t.Fatalf("skip %s: %d results in pieces, %d at once", name, len(slow), len(got))
		}
	}
}

func FuzzDecode(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), ReaderOptions{})
		var (
			m       Message
			ev, ev2 Event
		)
		for {
			err := r.Next(&m)
			var me *MessageError
			if errors.As(err, &me) {
				continue
			}
			if err != nil {
				return
			}
			ok := Decode(&m, &ev)
			if ok2 := Decode(&m, &ev2); ok2 != ok || ev != ev2 {
				t.Fatalf("Decode not repeatable: %+v vs %+v", ev, ev2)
			}
			if !ok {
				if ev != (Event{}) {
					t.Fatalf("rejected message left %+v", ev)
				}
				continue
			}
			if ev.Kind == KindUnknown || ev.Kind > KindFullyBooted {
				t.Fatalf("Decode returned true with kind %v", ev.Kind)
			}
			if rep := repeatedField(&m); ev.Forged != (rep != "") || ev.ForgedField != rep {
				t.Fatalf("Forged %v %q, repeated %q in %q", ev.Forged, ev.ForgedField, rep, m.Raw())
			}
			switch ev.Kind {
			case KindNewchannel, KindHangup, KindDialBegin, KindDialEnd:
				if ev.Channel != m.Get("Channel") || ev.Uniqueid != m.Get("Uniqueid") {
					t.Fatalf("channel %q uniqueid %q from %q", ev.Channel, ev.Uniqueid, m.Raw())
				}
			case KindSecurity:
				if ev.AccountID != m.Get("AccountID") || (!ev.RemoteAddr.IsValid() && ev.RemotePort != 0) {
					t.Fatalf("security %+v from %q", ev, m.Raw())
				}
			}
		}
	})
}

// repeatedField is what Decode's ForgedField must be, found the slow way:
// the first header, in message order, whose field Decode reads and that was
// already seen (DestChannel and Destination count as one field), or a
// Linkedid before any Uniqueid.
func repeatedField(m *Message) string {
	seen := map[string]bool{}
	for i := 0; i < m.Len(); i++ {
		key := strings.ToLower(string(m.Key(i)))
		f := -1
		for j, name := range fieldNames {
			if name == key {
				f = j
			}
		}
		if f < 0 {
			continue
		}
		k := key
		if k == "destination" {
			k = "destchannel"
		}
		if seen[k] || k == "linkedid" && !seen["uniqueid"] {
			return fieldDisplay[f]
		}
		seen[k] = true
	}
	return ""
}
