package message

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/template"
	"time"
	"unicode"
)

// The formats of a body template (notify.webhook.body_format).
const (
	// FormatJSON: the template writes JSON. Every string it inserts is
	// escaped for the inside of a JSON string ("{{.Title}}" between
	// quotes), and what it writes must be valid JSON.
	FormatJSON = "json"
	// FormatText: the template writes plain text; the strings are
	// inserted as they are (clean already: no control character but the
	// line ends of Text).
	FormatText = "text"
)

// Template is a webhook body template: Go's text/template over a Message
// whose strings are escaped for the format. Besides the template
// language's own functions it has join (join LIST SEP).
type Template struct {
	format string
	t      *template.Template
}

// maxBody bounds what a template may write.
const maxBody = 1 << 20

// Compile parses src as a body template of format (FormatJSON or
// FormatText) and checks it by executing it on Sample: a field that does
// not exist, or JSON that is not valid, is an error now rather than at
// the first incident.
func Compile(format, src string) (*Template, error) {
	switch format {
	case FormatJSON, FormatText:
	default:
		return nil, fmt.Errorf("%q is not a body format (json or text)", format)
	}
	t, err := template.New("body").Option("missingkey=error").Funcs(template.FuncMap{"join": strings.Join}).Parse(src)
	if err != nil {
		return nil, err
	}
	tp := &Template{format: format, t: t}
	if _, err := tp.Execute(Sample()); err != nil {
		return nil, err
	}
	return tp, nil
}

// ContentType is the body's media type.
func (tp *Template) ContentType() string {
	if tp.format == FormatJSON {
		return "application/json"
	}
	return "text/plain; charset=utf-8"
}

// Execute writes m through the template. A JSON template's output must be
// valid JSON.
func (tp *Template) Execute(m *Message) ([]byte, error) {
	esc := identity
	if tp.format == FormatJSON {
		esc = jsonString
	}
	var buf bytes.Buffer
	if err := tp.t.Execute(&limitWriter{w: &buf, n: maxBody}, m.Escaped(esc)); err != nil {
		return nil, err
	}
	if tp.format == FormatJSON && !json.Valid(buf.Bytes()) {
		return nil, errors.New("the template does not write valid JSON (put each string value between quotes: \"{{.Title}}\")")
	}
	return buf.Bytes(), nil
}

// limitWriter fails a write past n bytes.
type limitWriter struct {
	w *bytes.Buffer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.w.Len()+len(p) > l.n {
		return 0, fmt.Errorf("the template writes more than %d bytes", l.n)
	}
	return l.w.Write(p)
}

func identity(s string) string { return s }

// jsonString is s escaped for the inside of a JSON string, without the
// quotes.
func jsonString(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b[1 : len(b)-1])
}

// Escaped returns a copy of m with every string passed through esc.
func (m *Message) Escaped(esc func(string) string) *Message {
	out := *m
	out.Kind, out.Event, out.Severity, out.Instance, out.Mode = esc(m.Kind), esc(m.Event), esc(m.Severity), esc(m.Instance), esc(m.Mode)
	out.Title, out.Text = esc(m.Title), esc(m.Text)
	if m.Incident != nil {
		inc := m.Incident.escaped(esc)
		out.Incident = &inc
	}
	if m.Incidents != nil {
		out.Incidents = make([]Incident, len(m.Incidents))
		for i := range m.Incidents {
			out.Incidents[i] = m.Incidents[i].escaped(esc)
		}
	}
	if m.Trouble != nil {
		t := *m.Trouble
		t.What, t.Name, t.Problem, t.Detail = esc(t.What), esc(t.Name), esc(t.Problem), esc(t.Detail)
		out.Trouble = &t
	}
	return &out
}

func (inc *Incident) escaped(esc func(string) string) Incident {
	out := *inc
	out.ID, out.State, out.Extension, out.Address = esc(inc.ID), esc(inc.State), esc(inc.Extension), esc(inc.Address)
	out.Rule, out.Severity, out.SecretsFile = esc(inc.Rule), esc(inc.Severity), esc(inc.SecretsFile)
	out.Updates, out.Sources, out.Contacts = escList(inc.Updates, esc), escList(inc.Sources, esc), escList(inc.Contacts, esc)
	out.Accounts, out.Numbers = escList(inc.Accounts, esc), escList(inc.Numbers, esc)
	if inc.Figures != nil {
		out.Figures = make([]Figure, len(inc.Figures))
		for i, f := range inc.Figures {
			out.Figures[i] = Figure{Rule: esc(f.Rule), Severity: esc(f.Severity), Count: f.Count, Window: esc(f.Window), Reason: esc(f.Reason)}
		}
	}
	if inc.Actions != nil {
		out.Actions = make([]Action, len(inc.Actions))
		for i, a := range inc.Actions {
			out.Actions[i] = Action{Action: esc(a.Action), Result: esc(a.Result), Attempts: a.Attempts,
				Target: esc(a.Target), Detail: esc(a.Detail), Error: esc(a.Error)}
		}
	}
	return out
}

func escList(l []string, esc func(string) string) []string {
	if l == nil {
		return nil
	}
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = esc(s)
	}
	return out
}

// Clean returns s with every control character (CR, LF, tab, DEL, the C1
// controls, the Unicode line and paragraph separators) and every invalid
// UTF-8 byte written as a Go escape (\r, \n, \x7f, \u2028, \ufffd), so
// that a value an attacker shaped can neither add a line nor a header
// wherever it is written. Printable text is kept as it is.
func Clean(s string) string {
	if !strings.ContainsFunc(s, needsEscape) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch { // an invalid byte reads as U+FFFD, written \ufffd
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case needsEscape(r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func needsEscape(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || r == unicode.ReplacementChar
}

// Sample is a message with every field set: the one `guard notify-test`
// sends, and the one a body template is checked with.
func Sample() *Message {
	t := time.Date(2026, 11, 30, 1, 51, 0, 0, time.UTC)
	return &Message{
		Kind: KindTest, Event: EventTest, Severity: "warning", Instance: "pbx1", Mode: "enforce", Time: t,
		Title: "test: a sample notification of astguard on pbx1: nothing happened",
		Text:  "This is a sample notification sent by guard notify-test.\nNothing happened: no incident is open because of it.\n",
		Incident: &Incident{
			ID: "inc-00000000", State: "open", Updates: []string{"opened"}, Extension: "SIP/200",
			Rule: "call_rate", Severity: "critical", Opened: t, LastAlert: t, Alerts: 1,
			Figures: []Figure{{Rule: "call_rate", Severity: "critical", Count: 5, Window: "1s", Reason: "extension SIP/200: 5 calls started in 1s"}},
			Sources: []string{"192.0.2.1"}, Numbers: []string{"0044000000000"},
			Actions: []Action{{Action: "hangup", Result: "would", Target: "SIP/200", Detail: "sample: nothing done"}},
		},
		Trouble: &Trouble{What: "ami", Name: "events", Down: false, Since: t},
	}
}
