package message

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestClean(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"0044207946", "0044207946"},
		{"0044\r\nBcc: x@example.com", `0044\r\nBcc: x@example.com`},
		{"a\tb\x00c\x7fd", `a\tb\x00c\x7fd`},
		{"caller\u2028name\u0085", `caller\u2028name\x85`},
		{"bad\xffbyte", `bad\ufffdbyte`},
		{"Zürich", "Zürich"},
	} {
		if got := Clean(tt.in); got != tt.want {
			t.Errorf("Clean(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// Compile checks a template at once: syntax, unknown fields, invalid
// JSON, an unknown format.
func TestCompileErrors(t *testing.T) {
	for _, tt := range []struct{ format, src, want string }{
		{FormatJSON, `{"a": "{{.Title}"}`, "bad character"},
		{FormatJSON, `{"a": "{{.Nope}}"}`, "can't evaluate field Nope"},
		{FormatJSON, `{"a": {{.Title}}}`, "does not write valid JSON"},
		{"yaml", `a: 1`, `"yaml" is not a body format`},
	} {
		_, err := Compile(tt.format, tt.src)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Compile(%s, %q) = %v, want %q", tt.format, tt.src, err, tt.want)
		}
	}
}

// JSON templates get the strings escaped for the inside of a JSON string;
// text templates get them as they are.
func TestExecuteEscapes(t *testing.T) {
	m := Sample()
	m.Title = `say "hi"` + "\n<b>"
	m.Incident.Numbers = []string{`00"44`, `\x`}
	tp, err := Compile(FormatJSON, `{"t": "{{.Title}}", "n": "{{join .Incident.Numbers ","}}", "k": "{{.Kind}}"}`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := tp.Execute(m)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(out, &got); err != nil || got["t"] != m.Title || got["n"] != `00"44,\x` || got["k"] != KindTest {
		t.Fatalf("%s: %v %v", out, got, err)
	}
	if tp.ContentType() != "application/json" {
		t.Error(tp.ContentType())
	}
	tx, err := Compile(FormatText, `{{.Title}} | {{join .Incident.Numbers ","}}`)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := tx.Execute(m); err != nil || string(out) != m.Title+` | 00"44,\x` || tx.ContentType() != "text/plain; charset=utf-8" {
		t.Fatalf("%q, %v", out, err)
	}
}
