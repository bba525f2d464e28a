package ami

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// An action's wire form: Action and ActionID first, the headers in order,
// repeated keys kept, CRLF line ends and the closing empty line.
func TestAppendAction(t *testing.T) {
	a := Action{Name: "UpdateConfig", Headers: []Header{
		{"SrcFilename", "sip.conf"}, {"Action-000000", "Update"}, {"Var", "a"}, {"Var", "b"}, {"Value-000000", ""},
	}}
	got, err := AppendAction([]byte("x"), a, "events-7")
	if err != nil {
		t.Fatal(err)
	}
	want := "xAction: UpdateConfig\r\nActionID: events-7\r\nSrcFilename: sip.conf\r\nAction-000000: Update\r\n" +
		"Var: a\r\nVar: b\r\nValue-000000: \r\n\r\n"
	if string(got) != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// Names, keys, values and the ActionID that could break the framing or
// that Asterisk would drop are refused, naming what was refused.
func TestAppendActionRefuses(t *testing.T) {
	long := strings.Repeat("a", MaxActionLine-len("Channel: \r\n")+1)
	for _, tc := range []struct {
		a       Action
		id, key string
	}{
		{Action{Name: ""}, "1", ""},
		{Action{Name: "Hang up"}, "1", ""},
		{Action{Name: "Hangup\r\nAction: Originate"}, "1", ""},
		{Action{Name: strings.Repeat("A", 65)}, "1", ""},
		{Action{Name: "Hangup"}, "1\r\nAction: Originate", "ActionID"},
		{Action{Name: "Hangup", Headers: []Header{{"Chan nel", "x"}}}, "1", "Chan nel"},
		{Action{Name: "Hangup", Headers: []Header{{"Channel:", "x"}}}, "1", "Channel:"},
		{Action{Name: "Hangup", Headers: []Header{{"", "x"}}}, "1", ""},
		{Action{Name: "Hangup", Headers: []Header{{"Channel", "x\x00"}}}, "1", "Channel"},
		{Action{Name: "Hangup", Headers: []Header{{"Channel", long}}}, "1", "Channel"},
	} {
		out, err := AppendAction(nil, tc.a, tc.id)
		var ue *UnsafeError
		if !errors.Is(err, ErrUnsafe) || !errors.As(err, &ue) || ue.Key != tc.key || out != nil {
			t.Errorf("%+v id %q: %q, %v; want ErrUnsafe about %q", tc.a, tc.id, out, err, tc.key)
		}
	}
	// The longest line that fits is accepted.
	if _, err := AppendAction(nil, Action{Name: "Hangup", Headers: []Header{{"Channel", long[1:]}}}, "1"); err != nil {
		t.Errorf("a line of exactly %d bytes: %v", MaxActionLine, err)
	}
}

// A Response keeps every header in order, repeated keys and the Output
// lines of a Response: Follows included, and owns its strings.
func TestMessageResponse(t *testing.T) {
	m := readOne(t, "Response: Follows\r\nPrivilege: Command\r\nActionID: a-1\r\nline one\r\nKey: colon\r\n--END COMMAND--\r\n\r\n")
	r := m.Response()
	want := []Header{{"Response", "Follows"}, {"Privilege", "Command"}, {"ActionID", "a-1"}, {"Output", "line one"}, {"Output", "Key: colon"}}
	if !slices.Equal(r.Headers, want) {
		t.Errorf("headers %q, want %q", r.Headers, want)
	}
	if !r.OK() || r.Get("actionid") != "a-1" || !slices.Equal(r.Values("Output"), []string{"line one", "Key: colon"}) {
		t.Errorf("OK %v, ActionID %q, Output %q", r.OK(), r.Get("actionid"), r.Values("Output"))
	}
	m2 := readOne(t, "Response: Error\r\nActionID: a-2\r\nMessage: No such channel\r\n\r\n")
	r2 := m2.Response()
	if r2.OK() || r2.Message() != "No such channel" {
		t.Errorf("error reply: OK %v, Message %q", r2.OK(), r2.Message())
	}
	// The strings survive the message's buffer being overwritten.
	for _, mm := range []*Message{m, m2} {
		for i := range mm.buf {
			mm.buf[i] = 'x'
		}
	}
	if r2.Get("ActionID") != "a-2" || r.Get("ActionID") != "a-1" {
		t.Error("a Response's strings alias the message buffer")
	}
}
