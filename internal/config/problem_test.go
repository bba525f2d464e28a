package config

import (
	"errors"
	"strings"
	"testing"
)

// Load reports every problem of the file in one run, each with the file,
// the line of its key (of the item, in a list) and the key, in the order
// of the lines.
func TestLoadLocatesEveryProblem(t *testing.T) {
	t.Setenv(SecretEnv, "")
	p := writeFile(t, t.TempDir(), "config.toml", `# astguard
mode = "enforce"
ami = {address = "127.0.0.1:5038", username = 5}

[detector]
cooldown = 300        # a type error does not hide the problems below
idle_expiry = "1h"
[detector.prefix_guess]
window = "2h"

[allow]
networks = [
  "192.0.2.0/24",
  "0.0.0.0/0",        # wide
  'fe80::1%eth0',
]
destinations = ["1x"]
colour = "blue"

[response]
never_block = ["10.1.2.3/1"]
retry_max = 0
`)
	_, err := Load(p)
	want := strings.Join([]string{
		p + `:3: ami.username must be a string, not an integer`,
		p + `:6: detector.cooldown: 300 is not a duration (a quoted string like "60s", "10m" or "1h")`,
		p + `:7: detector.idle_expiry (1h) must not be shorter than detector.prefix_guess.window (2h)`,
		p + `:14: allow.networks[1]: "0.0.0.0/0" is wider than /8 (allow.widest_ipv4), so no address in it would ever be counted or blocked; if you mean it, add "0.0.0.0/0" to confirm_wide in [allow]`,
		p + `:15: allow.networks[2]: "fe80::1%eth0" is not an IP address or CIDR network`,
		p + `:17: allow.destinations: "1x" is not a dialled prefix (digits, optionally after a leading +)`,
		p + `:18: unknown key allow.colour`,
		p + `:21: response.never_block[0]: "10.1.2.3/1" has host bits set: write 0.0.0.0/1 for the network or 10.1.2.3/32 for the address`,
		p + `:22: response.retry_max must be between 1 and 100`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("error\n got: %v\nwant: %s", err, want)
	}
	probs := Problems(err)
	if len(probs) != 9 {
		t.Fatalf("Problems: %d, want 9", len(probs))
	}
	if got := *probs[3]; got.File != p || got.Line != 14 || got.Key != "allow.networks[1]" ||
		!strings.HasPrefix(got.Text, `allow.networks[1]: "0.0.0.0/0" is wider`) {
		t.Errorf("Problem %+v", got)
	}
}

// A problem about a key left at its default points at the other key its
// text names, the one the file sets; one about no key of the file has no
// position.
func TestLoadLocatesByTheOtherKey(t *testing.T) {
	p := writeFile(t, t.TempDir(), "config.toml", "\n[detector.failed_probes]\nwindow = \"2h\"\n")
	t.Setenv(SecretEnv, "bad\nsecret")
	_, err := Load(p)
	want := SecretEnv + " must not contain CR or LF\n" +
		p + ":3: detector.idle_expiry (1h) must not be shorter than detector.failed_probes.window (2h)"
	if err == nil || err.Error() != want {
		t.Fatalf("error\n got: %v\nwant: %s", err, want)
	}
	probs := Problems(err)
	if len(probs) != 2 || probs[0].Key != "" || probs[0].Line != 0 || probs[1].Key != "detector.idle_expiry" || probs[1].Line != 3 {
		t.Errorf("Problems: %+v %+v", probs[0], probs[1])
	}
}

// Every problem of the bad configurations is about a key written in the
// file, and is found at a line of it.
func TestBadConfigsAreLocated(t *testing.T) {
	for _, tc := range badConfigs {
		_, err := Parse([]byte(tc.toml))
		probs := Problems(err)
		if len(probs) == 0 {
			t.Errorf("%s: no Problem in %v", tc.name, err)
		}
		lines := strings.Count(tc.toml, "\n") + 1
		for _, p := range probs {
			if p.Key == "" || p.Line < 1 || p.Line > lines {
				t.Errorf("%s: %q: key %q, line %d", tc.name, p.Text, p.Key, p.Line)
			}
			if p.Error() != p.Text {
				t.Errorf("%s: Parse's problem %q prints as %q", tc.name, p.Text, p.Error())
			}
		}
	}
}

func TestProblemsOfOtherErrors(t *testing.T) {
	if _, err := Load("/nonexistent.toml"); err == nil || Problems(err) != nil {
		t.Errorf("Load of a missing file: %v, Problems %v", err, Problems(err))
	}
	if _, err := Parse([]byte("[ami\n")); err == nil || Problems(err) != nil {
		t.Errorf("syntax error: %v, Problems %v", err, Problems(err))
	}
	if Problems(errors.New("x")) != nil {
		t.Error("Problems of a plain error")
	}
}

func TestKeyLines(t *testing.T) {
	src := `# [fake] header in a comment: x = 1
top = 1
a.b . "c d" = 2   # dotted, spaced, quoted
[t1]
s = """
[not.a.table]
k = "v"
"""
'lit' = '''
x = 1'''
arr = [
  "one", # first
  [1, 2], {n = 1},

  'four',
]
inl = {p = 1, q.r = [3,
  4]}
date = 1979-05-27 07:32:00Z
[[aot]]
y = 1
[[aot]]
z = "]"
[ t2 . "u" ]
esc = "a\"b\\"
after = true
`
	want := map[string]int{
		"top": 2, "a": 3, "a.b": 3, `a.b."c d"`: 3,
		"t1": 4, "t1.s": 5, "t1.lit": 9, "t1.arr": 11,
		"t1.arr[0]": 12, "t1.arr[1]": 13, "t1.arr[2]": 13, "t1.arr[3]": 15,
		"t1.inl": 17, "t1.inl.p": 17, "t1.inl.q": 17, "t1.inl.q.r": 17, "t1.inl.q.r[0]": 17, "t1.inl.q.r[1]": 18,
		"t1.date": 19, "aot": 20, "aot.y": 21, "aot.z": 23, "t2": 24, "t2.u": 24,
		"t2.u.esc": 25, "t2.u.after": 26,
	}
	got := keyLines(src)
	for k, l := range want {
		if got[k] != l {
			t.Errorf("line of %s: %d, want %d", k, got[k], l)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected key %s at line %d", k, got[k])
		}
	}
}

// Every key of the example is found on a line that writes it.
func TestKeyLinesOfExample(t *testing.T) {
	data := readExample(t)
	lines := strings.Split(string(data), "\n")
	got := keyLines(string(data))
	for key, kd := range schema {
		l := got[key]
		if l < 1 || l > len(lines) {
			t.Errorf("%s: line %d", key, l)
			continue
		}
		last := key[strings.LastIndexByte(key, '.')+1:]
		if kd != kindTable && !strings.HasPrefix(strings.TrimSpace(lines[l-1]), last+" =") {
			t.Errorf("%s: line %d is %q", key, l, lines[l-1])
		}
	}
}

// keyLines reads what toml parses; on anything else it must still end.
func TestKeyLinesOnBrokenText(t *testing.T) {
	for _, s := range []string{"", "[", "[[", "a = [", "a = {", `a = "`, `a = """`, "a = '''x", `"`, "=", "]]", "a.", `a = "\`, `a = [{b = "} {`} {
		keyLines(s)
	}
	if got := keyLines("a = 1\r\nb = [\r\n 2]\r\n"); got["b"] != 2 || got["b[0]"] != 3 {
		t.Errorf("CRLF: %v", got)
	}
}
