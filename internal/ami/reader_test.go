package ami

import (
	"bytes"
	"errors"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

const transcriptDir = "../../testdata/transcripts/"

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(transcriptDir + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// describe renders a message as `Key=Value|Key=Value`.
func describe(m *Message) string {
	var sb strings.Builder
	for i := 0; i < m.Len(); i++ {
		if i > 0 {
			sb.WriteByte('|')
		}
		sb.Write(m.Key(i))
		sb.WriteByte('=')
		sb.Write(m.Value(i))
	}
	return sb.String()
}

// result is what one Next call gave.
type result struct {
	desc string // describe(m), or the error class
	raw  string
}

func errClass(err error) string {
	switch {
	case errors.Is(err, ErrMalformed):
		return "!malformed"
	case errors.Is(err, ErrOversized):
		return "!oversized"
	case err == io.EOF:
		return "!EOF"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "!unexpectedEOF"
	}
	return "!other: " + err.Error()
}

// readAll reads every message of r until a fatal error, which ends the list.
func readAll(t testing.TB, r *Reader) []result {
	var out []result
	var m Message
	for i := 0; ; i++ {
		if i > 1<<20 {
			t.Fatal("reader does not stop")
		}
		err := r.Next(&m)
		if err == nil {
			out = append(out, result{describe(&m), string(m.Raw())})
			continue
		}
		out = append(out, result{desc: errClass(err)})
		var me *MessageError
		if !errors.As(err, &me) {
			return out
		}
	}
}

func descs(rs []result) []string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.desc
	}
	return s
}

func TestReaderFrames(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		max   int
		want  []string
		stats ReaderStats // Bytes is checked against len(in)
	}{
		{
			name:  "repeated keys kept in order",
			in:    "Response: Success\r\nOutput: a\r\nOutput: b\r\nMessage: x\r\n\r\n",
			want:  []string{"Response=Success|Output=a|Output=b|Message=x", "!EOF"},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "empty value",
			in:    "Event: Newchannel\r\nAccountCode: \r\nExten:\r\n\r\n",
			want:  []string{"Event=Newchannel|AccountCode=|Exten=", "!EOF"},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "colons inside values, one leading space removed",
			in:    "Event: RequestBadFormat\r\nRequestType: Action: PJSIPUnregister\r\nAddress: 127.0.0.3:5063\r\nK:  two\r\nK2:x\r\n\r\n",
			want:  []string{"Event=RequestBadFormat|RequestType=Action: PJSIPUnregister|Address=127.0.0.3:5063|K= two|K2=x", "!EOF"},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "keys trimmed, trailing blanks of values kept",
			in:    " Event \t: Hangup \r\n\r\n",
			want:  []string{"Event=Hangup ", "!EOF"},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "bare LF and mixed endings",
			in:    "Event: A\nK: v\n\nEvent: B\r\nK: w\n\r\n",
			want:  []string{"Event=A|K=v", "Event=B|K=w", "!EOF"},
			stats: ReaderStats{Messages: 2},
		},
		{
			name:  "empty lines between messages skipped",
			in:    "\r\n\nEvent: A\r\n\r\n\r\n\r\nEvent: B\r\n\r\n",
			want:  []string{"Event=A", "Event=B", "!EOF"},
			stats: ReaderStats{Messages: 2},
		},
		{
			name:  "garbage line rejects the whole message only",
			in:    "Event: A\r\nthis is garbage\r\nKey: v\r\n\r\nEvent: B\r\n\r\n",
			want:  []string{"!malformed", "Event=B", "!EOF"},
			stats: ReaderStats{Messages: 1, Malformed: 1},
		},
		{
			name:  "empty key is malformed",
			in:    "Event: A\r\n : v\r\n\r\nEvent: B\r\n\r\n",
			want:  []string{"!malformed", "Event=B", "!EOF"},
			stats: ReaderStats{Messages: 1, Malformed: 1},
		},
		{
			name:  "oversized message then a good one",
			in:    "Event: Big\r\n" + strings.Repeat("K: 0123456789\r\n", 10) + "\r\nEvent: Small\r\n\r\n",
			max:   100,
			want:  []string{"!oversized", "Event=Small", "!EOF"},
			stats: ReaderStats{Messages: 1, Oversized: 1},
		},
		{
			name:  "closing line counts toward the cap",
			in:    "Event: " + strings.Repeat("x", 55) + "\r\n\r\nEvent: " + strings.Repeat("x", 53) + "\r\n\r\n",
			max:   64,
			want:  []string{"!oversized", "Event=" + strings.Repeat("x", 53), "!EOF"},
			stats: ReaderStats{Messages: 1, Oversized: 1},
		},
		{
			name:  "line longer than the buffer then a good message",
			in:    "Event: Big\r\nK: " + strings.Repeat("y", 5000) + "\r\nL: 1\r\n\r\nEvent: Small\r\n\r\n",
			max:   100,
			want:  []string{"!oversized", "Event=Small", "!EOF"},
			stats: ReaderStats{Messages: 1, Oversized: 1},
		},
		{
			name:  "overlong first line",
			in:    strings.Repeat("z", 300) + "\r\n\r\nEvent: Small\r\n\r\n",
			max:   100,
			want:  []string{"!oversized", "Event=Small", "!EOF"},
			stats: ReaderStats{Messages: 1, Oversized: 1},
		},
		{
			name:  "EOF inside a message",
			in:    "Event: A\r\n\r\nEvent: B\r\nKey: v\r\n",
			want:  []string{"Event=A", "!unexpectedEOF"},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "EOF inside a line",
			in:    "Event: A\r\n\r\nEvent: B\r\nKe",
			want:  []string{"Event=A", "!unexpectedEOF"},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "EOF after a first partial line",
			in:    "Event: A",
			want:  []string{"!unexpectedEOF"},
			stats: ReaderStats{},
		},
		{
			name:  "EOF inside a skipped message reports both",
			in:    "Event: A\r\ngarbage\r\n",
			want:  []string{"!malformed", "!unexpectedEOF"},
			stats: ReaderStats{Malformed: 1},
		},
		{
			name:  "empty stream",
			in:    "",
			want:  []string{"!EOF"},
			stats: ReaderStats{},
		},
		{
			name: "Response: Follows keeps raw output lines",
			in: "Response: Follows\r\nPrivilege: Command\r\nActionID: 7\r\n" +
				"Name/username   Host: x\n\nPeer: 200\n--END COMMAND--\r\n\r\nEvent: B\r\n\r\n",
			want: []string{
				"Response=Follows|Privilege=Command|ActionID=7|Output=Name/username   Host: x|Output=|Output=Peer: 200",
				"Event=B", "!EOF",
			},
			stats: ReaderStats{Messages: 2},
		},
		{
			name: "Response: Follows with the marker glued to the output",
			in:   "Response: Follows\r\nPrivilege: Command\r\nno newline--END COMMAND--\r\n\r\n",
			want: []string{
				"Response=Follows|Privilege=Command|Output=no newline", "!EOF",
			},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "Response: Follows cut by EOF",
			in:    "Response: Follows\r\nPrivilege: Command\r\ntext\r\n\r\n",
			want:  []string{"!unexpectedEOF"},
			stats: ReaderStats{},
		},
		{
			name: "oversized Response: Follows skipped to its end",
			in: "Response: Follows\r\nPrivilege: Command\r\n" + strings.Repeat("line\r\n\r\n", 30) +
				"--END COMMAND--\r\n\r\nEvent: B\r\n\r\n",
			max:   100,
			want:  []string{"!oversized", "Event=B", "!EOF"},
			stats: ReaderStats{Messages: 1, Oversized: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in), ReaderOptions{MaxMessageBytes: tt.max})
			got := descs(readAll(t, r))
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
			tt.stats.Bytes = int64(len(tt.in))
			if st := r.Stats(); st != tt.stats {
				t.Errorf("stats %+v, want %+v", st, tt.stats)
			}
			// The fatal error sticks.
			var m Message
			if err := r.Next(&m); errClass(err) != tt.want[len(tt.want)-1] {
				t.Errorf("after the end: %v", err)
			}
		})
	}
}

func TestMessageAccessors(t *testing.T) {
	in := "Event: Hangup\r\nChannel: SIP/200-0000000d\r\nChanVariable: a=1\r\nchanvariable: b=2\r\nAccountCode: \r\nCause: 16\r\n\r\n"
	r := NewReader(strings.NewReader(in), ReaderOptions{})
	var m Message
	if err := r.Next(&m); err != nil {
		t.Fatal(err)
	}
	if !m.IsEvent() || m.IsResponse() {
		t.Errorf("IsEvent %v IsResponse %v", m.IsEvent(), m.IsResponse())
	}
	if m.Len() != 6 {
		t.Errorf("Len %d", m.Len())
	}
	for _, k := range []string{"channel", "CHANNEL", "Channel", "cHaNnEl"} {
		if got := m.Get(k); got != "SIP/200-0000000d" {
			t.Errorf("Get(%q) = %q", k, got)
		}
	}
	if got := m.Values("ChanVariable"); strings.Join(got, ",") != "a=1,b=2" {
		t.Errorf("Values = %q", got)
	}
	if got := m.Values("Missing"); got != nil {
		t.Errorf("Values(Missing) = %q", got)
	}
	if !m.Has("accountcode") || m.GetBytes("AccountCode") == nil || len(m.GetBytes("AccountCode")) != 0 {
		t.Errorf("empty AccountCode: Has %v GetBytes %q", m.Has("accountcode"), m.GetBytes("AccountCode"))
	}
	if m.Has("Linkedid") || m.GetBytes("Linkedid") != nil || m.Get("Linkedid") != "" {
		t.Error("missing header found")
	}
	if string(m.Raw()) != in {
		t.Errorf("Raw = %q", m.Raw())
	}
	if n := testing.AllocsPerRun(100, func() { _ = m.GetBytes("cause") }); n != 0 {
		t.Errorf("GetBytes allocates %v times", n)
	}
	// Get returns a copy that survives the next message.
	keep := m.Get("Channel")
	r.Reset(strings.NewReader("Response: Success\r\nChannel: XXXXXXXXXXXXXXXX\r\n\r\n"))
	if err := r.Next(&m); err != nil {
		t.Fatal(err)
	}
	if keep != "SIP/200-0000000d" || !m.IsResponse() || m.IsEvent() {
		t.Errorf("kept %q, IsResponse %v", keep, m.IsResponse())
	}
	var zero Message
	if zero.Len() != 0 || zero.IsEvent() || zero.Get("x") != "" || len(zero.Raw()) != 0 {
		t.Error("zero Message not empty")
	}
}

func TestReadBanner(t *testing.T) {
	tests := []struct {
		in, want string
		err      error
	}{
		{in: "Asterisk Call Manager/9.0.0\r\nResponse: Success\r\n\r\n", want: "Asterisk Call Manager/9.0.0"},
		{in: "Asterisk Call Manager/1.1\n", want: "Asterisk Call Manager/1.1"},
		{in: "Response: Success\r\n\r\n", err: ErrBanner},
		{in: "Asterisk Call Manager/\r\n", err: ErrBanner},
		{in: "Asterisk Call Manager/9 0\r\n", err: ErrBanner},
		{in: "SSH-2.0-OpenSSH_9.6\r\n", err: ErrBanner},
		{in: "Asterisk Call Manager/" + strings.Repeat("9", 300) + "\r\n", err: ErrBanner},
		{in: "Asterisk Call Manager/9.0.0", err: io.ErrUnexpectedEOF},
		{in: "", err: io.EOF},
	}
	for _, tt := range tests {
		r := NewReader(strings.NewReader(tt.in), ReaderOptions{})
		got, err := r.ReadBanner()
		if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("ReadBanner(%.40q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.err)
		}
		if err != nil {
			if _, err2 := r.ReadBanner(); err2 != err {
				t.Errorf("error not sticky: %v then %v", err, err2)
			}
			continue
		}
		var m Message
		if err := r.Next(&m); err != nil && err != io.EOF {
			t.Errorf("Next after banner: %v", err)
		}
	}
	// A banner longer than the read buffer is rejected without buffering it.
	r := NewReader(io.MultiReader(strings.NewReader("Asterisk Call Manager/"), endless{}), ReaderOptions{MaxMessageBytes: 64, BufferSize: 64})
	if _, err := r.ReadBanner(); !errors.Is(err, ErrBanner) {
		t.Errorf("endless banner: %v", err)
	}
}

// endless yields 'a' forever.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

func TestReaderEndlessLineBoundedMemory(t *testing.T) {
	const size = 32 << 20 // 8 times the bound below, 128 times the reader's buffer
	tail := "\r\n\r\nEvent: After\r\n\r\n"
	for _, withTail := range []bool{false, true} {
		src := io.Reader(io.LimitReader(endless{}, size))
		want := []string{"!oversized", "!unexpectedEOF"}
		if withTail {
			src = io.MultiReader(strings.NewReader("Event: Start\r\nKey: "), src, strings.NewReader(tail))
			want = []string{"!oversized", "Event=After", "!EOF"}
		}
		r := NewReader(src, ReaderOptions{})
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		got := descs(readAll(t, r))
		runtime.ReadMemStats(&after)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("tail %v: got %q, want %q", withTail, got, want)
		}
		if st := r.Stats(); st.Bytes < size || st.Oversized != 1 {
			t.Errorf("tail %v: stats %+v", withTail, st)
		}
		// 32 MiB went through; the reader may hold its 256 KiB buffer and
		// a message, never the line.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
			t.Errorf("tail %v: allocated %d bytes reading a %d-byte line", withTail, alloc, size)
		}
	}
}

func TestReaderMessageBufferBounded(t *testing.T) {
	// Many lines, none too long, adding up to far more than the cap.
	in := "Event: Big\r\n" + strings.Repeat("Key: value value value\r\n", 100000) + "\r\nEvent: B\r\n\r\n"
	r := NewReader(strings.NewReader(in), ReaderOptions{MaxMessageBytes: 1024})
	var m Message
	err := r.Next(&m)
	var me *MessageError
	if !errors.As(err, &me) || me.Err != ErrOversized || me.Seq != 1 || me.Offset != 0 {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(err.Error(), "message 1 at byte 0 is oversized") {
		t.Errorf("error text %q", err)
	}
	if cap(m.buf) > 2048 {
		t.Errorf("message buffer grew to %d bytes", cap(m.buf))
	}
	if err := r.Next(&m); err != nil || m.Get("Event") != "B" {
		t.Errorf("after oversized: %v %q", err, describe(&m))
	}
}

func TestMessageErrorText(t *testing.T) {
	in := "Event: A\r\n\r\nEvent: B\r\nK: v\r\nbad line\r\n\r\n"
	r := NewReader(strings.NewReader(in), ReaderOptions{})
	var m Message
	if err := r.Next(&m); err != nil {
		t.Fatal(err)
	}
	err := r.Next(&m)
	const want = "ami: message 2 at byte 12 is malformed: line 3: line has no colon"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// splitReader returns data[:cut] on its first Read and the rest after.
type splitReader struct {
	data []byte
	cut  int
	done bool
}

func (s *splitReader) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := len(s.data)
	if !s.done {
		s.done = true
		n = s.cut
	}
	n = copy(p, s.data[:n])
	s.data = s.data[n:]
	return n, nil
}

// splitCorpus holds literal frames of every shape the reader handles.
const splitCorpus = "Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n" +
	"Event: A\nK: v\n\n" +
	"\r\n" +
	"Event: Bad\r\ngarbage\r\n\r\n" +
	"Event: Big\r\nK: " + "0123456789012345678901234567890123456789012345678901234567890123456789" + "\r\n\r\n" +
	"Response: Follows\r\nPrivilege: Command\r\nout: 1\n\nglued--END COMMAND--\r\n\r\n" +
	"Event: Last\r\nAccountCode: \r\n\r\n"

func TestReaderSplitAtEveryByte(t *testing.T) {
	fixture := readFixture(t, "attack-mixed.ami")
	i := bytes.Index(fixture, []byte("Event: DialBegin"))
	realFrames := fixture[i : i+bytes.Index(fixture[i:], []byte("\r\n\r\n"))+4]
	i = bytes.Index(fixture, []byte("Event: VarSet"))
	realFrames = append(realFrames, fixture[i:i+bytes.Index(fixture[i:], []byte("\r\n\r\n"))+4]...)
	for _, tc := range []struct {
		name string
		data []byte
		opts ReaderOptions
	}{
		{"literal", []byte(splitCorpus), ReaderOptions{MaxMessageBytes: 96}},
		{"literal, skipping", []byte(splitCorpus), ReaderOptions{MaxMessageBytes: 96, Skip: skipNames("FullyBooted", "A", "Bad", "Big")}},
		{"real", realFrames, ReaderOptions{}},
		{"real, skipping", realFrames, ReaderOptions{Skip: skipNames("VarSet")}},
	} {
		want := readAll(t, NewReader(bytes.NewReader(tc.data), tc.opts))
		if len(want) < 2 {
			t.Fatalf("%s: too few results: %v", tc.name, want)
		}
		readers := map[string]func() io.Reader{
			"OneByteReader": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(tc.data)) },
			"HalfReader":    func() io.Reader { return iotest.HalfReader(bytes.NewReader(tc.data)) },
			"DataErrReader": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(tc.data)) },
		}
		for cut := 0; cut <= len(tc.data); cut++ {
			got := readAll(t, NewReader(&splitReader{data: tc.data, cut: cut}, tc.opts))
			if !equalResults(got, want) {
				t.Fatalf("%s: split at %d: got %v, want %v", tc.name, cut, got, want)
			}
		}
		for name, mk := range readers {
			got := readAll(t, NewReader(mk(), tc.opts))
			if !equalResults(got, want) {
				t.Errorf("%s: %s: got %v, want %v", tc.name, name, got, want)
			}
		}
	}
}

func equalResults(a, b []result) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// readSeqs reads every message of r like readAll, each result prefixed
// with the reader's position after it: "3:Event=B", "4:!malformed".
func readSeqs(t testing.TB, r *Reader) []string {
	var out []string
	var m Message
	for i := 0; ; i++ {
		if i > 1<<20 {
			t.Fatal("reader does not stop")
		}
		err := r.Next(&m)
		d := describe(&m)
		if err != nil {
			d = errClass(err)
		}
		out = append(out, strconv.Itoa(r.Seq())+":"+d)
		var me *MessageError
		if err != nil && !errors.As(err, &me) {
			return out
		}
	}
}

func skipNames(names ...string) func([]byte) bool {
	return func(name []byte) bool {
		for _, n := range names {
			if string(name) == n {
				return true
			}
		}
		return false
	}
}

func TestReaderSkip(t *testing.T) {
	big := strings.Repeat("K: 0123456789\r\n", 20)
	tests := []struct {
		name  string
		in    string
		skip  func([]byte) bool
		max   int
		want  []string
		stats ReaderStats // Bytes is checked against len(in)
	}{
		{
			name:  "skipped events keep their positions",
			in:    "Response: Success\r\n\r\nEvent: VarSet\r\nVariable: x\r\n\r\nEvent: Hangup\r\nCause: 16\r\n\r\nEvent: VarSet\r\n\r\nEvent: Newexten\r\n\r\n",
			skip:  skipNames("VarSet", "Newexten"),
			want:  []string{"1:Response=Success", "3:Event=Hangup|Cause=16", "5:!EOF"},
			stats: ReaderStats{Messages: 2, Skipped: 3},
		},
		{
			name:  "responses and other first headers are never skipped",
			in:    "Response: VarSet\r\n\r\nPrivilege: x\r\nEvent: VarSet\r\n\r\nEventX: VarSet\r\n\r\n",
			skip:  func([]byte) bool { return true },
			want:  []string{"1:Response=VarSet", "2:Privilege=x|Event=VarSet", "3:EventX=VarSet", "3:!EOF"},
			stats: ReaderStats{Messages: 3},
		},
		{
			name:  "the name is cut as a header value: key trimmed, one space removed",
			in:    " event\t: VarSet\r\n\r\nEvent:VarSet\r\n\r\nEvent:  VarSet\r\n\r\nEvent: VarSet \r\n\r\nEvent: B\r\n\r\n",
			skip:  skipNames("VarSet"),
			want:  []string{"3:Event= VarSet", "4:Event=VarSet ", "5:Event=B", "5:!EOF"},
			stats: ReaderStats{Messages: 3, Skipped: 2},
		},
		{
			name:  "a skipped message is not checked",
			in:    "Event: VarSet\r\ngarbage\r\n : empty key\r\n" + big + "\r\nEvent: B\r\n\r\n",
			skip:  skipNames("VarSet"),
			max:   100,
			want:  []string{"2:Event=B", "2:!EOF"},
			stats: ReaderStats{Messages: 1, Skipped: 1},
		},
		{
			name:  "a line longer than the buffer in a skipped message",
			in:    "Event: VarSet\r\nK: " + strings.Repeat("y", 5000) + "\r\n\r\nEvent: B\r\n\r\n",
			skip:  skipNames("VarSet"),
			max:   100,
			want:  []string{"2:Event=B", "2:!EOF"},
			stats: ReaderStats{Messages: 1, Skipped: 1},
		},
		{
			name:  "a first line longer than the cap is not skipped",
			in:    "Event: VarSet" + strings.Repeat(" ", 100) + "\r\n\r\nEvent: B\r\n\r\n",
			skip:  func([]byte) bool { return true },
			max:   100,
			want:  []string{"1:!oversized", "2:!EOF"},
			stats: ReaderStats{Oversized: 1, Skipped: 1},
		},
		{
			name:  "LF, CRLF and mixed endings",
			in:    "Event: S\nK: v\n\nEvent: S\r\nK: v\n\r\nEvent: S\nK: v\r\n\nEvent: B\r\n\r\n",
			skip:  skipNames("S"),
			want:  []string{"4:Event=B", "4:!EOF"},
			stats: ReaderStats{Messages: 1, Skipped: 3},
		},
		{
			name:  "a line of a lone CR does not end the message",
			in:    "Event: S\r\n\r\r\nK: v\r\n\r\nEvent: B\r\n\r\n",
			skip:  skipNames("S"),
			want:  []string{"2:Event=B", "2:!EOF"},
			stats: ReaderStats{Messages: 1, Skipped: 1},
		},
		{
			name:  "EOF inside a skipped message",
			in:    "Event: B\r\n\r\nEvent: S\r\nK: v\r\n",
			skip:  skipNames("S"),
			want:  []string{"1:Event=B", "2:!unexpectedEOF"},
			stats: ReaderStats{Messages: 1},
		},
		{
			name:  "EOF after the first line of a skipped message",
			in:    "Event: S\r\n",
			skip:  skipNames("S"),
			want:  []string{"1:!unexpectedEOF"},
			stats: ReaderStats{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in), ReaderOptions{MaxMessageBytes: tt.max, BufferSize: tt.max, Skip: tt.skip})
			got := readSeqs(t, r)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
			tt.stats.Bytes = int64(len(tt.in))
			if st := r.Stats(); st != tt.stats {
				t.Errorf("stats %+v, want %+v", st, tt.stats)
			}
		})
	}
}
