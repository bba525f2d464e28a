package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/astguard/astguard/internal/detector"
)

const examplePath = "../../config.toml.example"

func readExample(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestExampleIsDefault(t *testing.T) {
	got, err := Parse(readExample(t))
	if err != nil {
		t.Fatalf("Parse(example): %v", err)
	}
	want := Default()
	if err := want.Validate(); err != nil {
		t.Fatalf("Default().Validate(): %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("example != Default()\nexample: %+v\ndefault: %+v", got, want)
	}
	if g, w := got.Detector(), want.Detector(); !reflect.DeepEqual(g, w) {
		t.Errorf("example.Detector() != Default().Detector()\nexample: %+v\ndefault: %+v", g, w)
	}
}

// Every key of Config is in the example, and every key line has a comment.
func TestExampleHasEveryKeyWithComment(t *testing.T) {
	data := readExample(t)
	var raw map[string]any
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		t.Fatal(err)
	}
	inFile := make(map[string]bool)
	for _, k := range md.Keys() {
		inFile[k.String()] = true
	}
	if len(schema) < 40 {
		t.Fatalf("schema has only %d keys", len(schema))
	}
	for key, kd := range schema {
		if !inFile[key] && kd != kindTable {
			t.Errorf("key %s is missing from the example", key)
		}
	}
	for i, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "=") && !strings.HasPrefix(strings.TrimSpace(line), "#") && !strings.Contains(line, "#") {
			t.Errorf("line %d has no comment: %s", i+1, line)
		}
	}
}

func TestDefaultIsFresh(t *testing.T) {
	a, b := Default(), Default()
	a.Detection.International.HighRiskCountries[0] = "999"
	a.Detection.International.AccessCodes[0] = "99"
	if b.Detection.International.HighRiskCountries[0] != "53" || b.Detection.International.AccessCodes[0] != "00" {
		t.Error("Default() shares slices between calls")
	}
	a.Policy.CallRate.Critical[1] = "x"
	a.Policy.FailedProbes.Critical[1] = "x"
	if b.Policy.CallRate.Critical[1] != ActionHangup || b.Policy.Concurrent.Critical[1] != ActionHangup ||
		b.Policy.FailedProbes.Critical[1] != ActionBlockIP || b.Policy.AuthFailures.Critical[1] != ActionBlockIP {
		t.Error("Default() shares policy lists between calls or rules")
	}
	a.Response.NeverBlock = append(a.Response.NeverBlock, "192.0.2.1")
	if len(b.Response.NeverBlock) != 0 {
		t.Error("Default() shares response.never_block between calls")
	}
}

func TestPolicyActions(t *testing.T) {
	c, err := Parse([]byte(`
[policy.call_rate]
warning = []
critical = ["block_ip", "alert"]
[policy.new_source]
critical = ["alert", "rotate_secret"]
`))
	if err != nil {
		t.Fatal(err)
	}
	all := []string{"alert", "hangup", "rotate_secret", "block_ip"}
	for _, tc := range []struct {
		rule, severity string
		want           []string
	}{
		{"call_rate", "warning", []string{}},
		{"call_rate", "critical", []string{"block_ip", "alert"}},
		{"concurrent", "warning", []string{"alert"}},
		{"concurrent", "critical", all},
		{"prefix_guess", "critical", all},
		{"international", "warning", []string{"alert"}},
		{"international", "critical", all},
		{"failed_probes", "warning", []string{"alert"}},
		{"failed_probes", "critical", []string{"alert", "block_ip"}},
		{"auth_failures", "critical", []string{"alert", "block_ip"}},
		{"new_source", "warning", []string{"alert"}},
		{"new_source", "critical", []string{"alert", "rotate_secret"}},
		// Unknown names give nil.
		{"high_risk", "critical", nil},
		{"unknown", "warning", nil},
		{"", "critical", nil},
		{"call_rate", "info", nil},
		{"call_rate", "Critical", nil},
		{"call_rate", "unknown", nil},
	} {
		got := c.Policy.Actions(tc.rule, tc.severity)
		if !slices.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("Actions(%q, %q) = %#v, want %#v", tc.rule, tc.severity, got, tc.want)
		}
	}
	// The slice is a copy.
	got := c.Policy.Actions("call_rate", "critical")
	got[0] = "x"
	if c.Policy.CallRate.Critical[0] != ActionBlockIP {
		t.Error("Actions shares its slice with the Config")
	}
}

// Every detector rule has a policy, under the rule's own name, for both
// severities.
func TestPolicyCoversDetectorRules(t *testing.T) {
	p := Default().Policy
	var names []string
	for r := detector.Rule(1); r.String() != "unknown"; r++ {
		names = append(names, r.String())
		for _, sev := range []detector.Severity{detector.Warning, detector.Critical} {
			if p.Actions(r.String(), sev.String()) == nil {
				t.Errorf("no policy for %s %s", r, sev)
			}
		}
	}
	if !slices.Equal(names, policyRules) {
		t.Errorf("detector rules %v, policy rules %v", names, policyRules)
	}
}

func TestNeverBlock(t *testing.T) {
	pfx := netip.MustParsePrefix
	c, err := Parse([]byte(`
[allow]
networks = ["192.0.2.0/24", "2001:db8::1"]
[response]
never_block = ["198.51.100.7", "10.0.0.0/8", "::ffff:203.0.113.9", "192.0.2.0/24"]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		pfx("198.51.100.7/32"), pfx("10.0.0.0/8"), pfx("203.0.113.9/32"), pfx("192.0.2.0/24"),
		pfx("192.0.2.0/24"), pfx("2001:db8::1/128"),
	}
	got := c.NeverBlock()
	if !slices.Equal(got, want) {
		t.Errorf("NeverBlock()\n got %v\nwant %v", got, want)
	}
	got[0] = pfx("0.0.0.0/0")
	if again := c.NeverBlock(); again[0] != want[0] {
		t.Error("NeverBlock shares its slice")
	}
	if got := Default().NeverBlock(); len(got) != 0 {
		t.Errorf("Default().NeverBlock() = %v, want none", got)
	}
}

func TestParseOverridesOnlyWhatIsSet(t *testing.T) {
	c, err := Parse([]byte(`
[detector.international]
access_codes = ["00"]
outside_line = "9"
[metrics]
listen = "127.0.0.1:9464"
[allow]
networks = ["192.0.2.0/24"]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Metrics.Listen = "127.0.0.1:9464"
	want.Detection.International.AccessCodes = []string{"00"}
	want.Detection.International.OutsideLine = "9"
	want.Allow.Networks = []string{"192.0.2.0/24"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
}

func TestDetector(t *testing.T) {
	c, err := Parse([]byte(`
[detector]
cooldown = "2m"
max_extensions = 10
max_addresses = 20
idle_expiry = "2h"
[detector.call_rate]
burst_window = "2s"
burst_warning = 4
burst_critical = 6
window = "90s"
warning = 31
critical = 61
[detector.concurrent]
warning = 0
critical = 9
[detector.prefix_guess]
digits = 9
window = "11m"
warning = 3
critical = 4
[detector.international]
access_codes = ["00"]
outside_line = "9"
window = "12m"
warning = 11
critical = 21
high_risk_countries = ["53", "882"]
high_risk_warning = 2
high_risk_critical = 0
[detector.failed_probes]
window = "3m"
warning = 7
critical = 8
[detector.auth_failures]
window = "4m"
warning = 0
critical = 0
[detector.new_source]
enabled = false
[allow]
extensions = ["carrier", "SIP/trunk1"]
networks = ["192.0.2.0/24", "2001:db8::1", "198.51.100.7", "10.0.0.0/8", "::ffff:203.0.113.9", "::ffff:203.0.113.0/120"]
destinations = ["112", "+4930"]
[response]
ipv6_prefix = 56
`))
	if err != nil {
		t.Fatal(err)
	}
	pfx := netip.MustParsePrefix
	want := detector.Config{
		CallRateBurst:     th(2*time.Second, 4, 6),
		CallRate:          th(90*time.Second, 31, 61),
		Concurrent:        th(0, 0, 9),
		PrefixGuess:       th(11*time.Minute, 3, 4),
		PrefixDigits:      9,
		International:     th(12*time.Minute, 11, 21),
		HighRisk:          th(12*time.Minute, 2, 0),
		AccessCodes:       []string{"00"},
		OutsideLine:       "9",
		HighRiskCountries: []string{"53", "882"},
		FailedProbes:      th(3*time.Minute, 7, 8),
		AuthFailures:      th(4*time.Minute, 0, 0),
		IPv6Prefix:        56,
		NewSource:         false,
		Cooldown:          2 * time.Minute,
		MaxExtensions:     10,
		MaxAddresses:      20,
		IdleExpiry:        2 * time.Hour,
		AllowExtensions:   []string{"carrier", "SIP/trunk1"},
		AllowNetworks: []netip.Prefix{
			pfx("192.0.2.0/24"), pfx("2001:db8::1/128"), pfx("198.51.100.7/32"),
			pfx("10.0.0.0/8"), pfx("203.0.113.9/32"), pfx("203.0.113.0/24"),
		},
		AllowDestinations: []string{"112", "+4930"},
	}
	got := c.Detector()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Detector()\n got %+v\nwant %+v", got, want)
	}
	// The slices are copies.
	got.AccessCodes[0] = "x"
	got.AllowExtensions[0] = "x"
	if c.Detection.International.AccessCodes[0] != "00" || c.Allow.Extensions[0] != "carrier" {
		t.Error("Detector() shares slices with the Config")
	}
}

func TestDuration(t *testing.T) {
	for in, want := range map[string]string{
		"60s": "1m", "10m": "10m", "1h": "1h", "90s": "1m30s", "1h30m": "1h30m",
		"1h0m1s": "1h0m1s", "0": "0s", "1.5s": "1.5s", "250ms": "250ms",
	} {
		var d Duration
		if err := d.UnmarshalText([]byte(in)); err != nil {
			t.Errorf("UnmarshalText(%q): %v", in, err)
			continue
		}
		text, err := d.MarshalText()
		if err != nil || string(text) != want {
			t.Errorf("%q: MarshalText = %q, %v; want %q", in, text, err, want)
		}
		var back Duration
		if err := back.UnmarshalText(text); err != nil || back != d {
			t.Errorf("%q: round trip gave %v, %v", in, back, err)
		}
	}
	var d Duration
	err := d.UnmarshalText([]byte("1d"))
	if want := `"1d" is not a duration (a quoted string like "60s", "10m" or "1h")`; err == nil || err.Error() != want {
		t.Errorf("UnmarshalText(1d) = %v, want %s", err, want)
	}
}

func TestSyntaxError(t *testing.T) {
	_, err := Parse([]byte("[ami]\nusername = \"guard\"\naddress = \n"))
	want := `syntax error at line 3, column 11: expected value but found '\n' instead`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		t.Fatal("errors.As(err, *toml.ParseError) = false")
	}
	if ctx := pe.ErrorWithPosition(); !strings.Contains(ctx, "At line 3, column 11") || !strings.Contains(ctx, "address = ") {
		t.Errorf("ErrorWithPosition() = %q", ctx)
	}

	// The column counts characters, not bytes (toml's span starts at the
	// space before the x: byte 19, character 18).
	_, err = Parse([]byte("[ami]\nusername = \"gärd\" x\n"))
	want = `syntax error at line 2, column 18: expected a top-level item to end with a newline, comment, or EOF, but got 'x' instead`
	if err == nil || err.Error() != want {
		t.Errorf("non-ASCII line: got %v\nwant %s", err, want)
	}

	_, err = Parse([]byte("[log]\nlevel = \"info\"\nlevel = \"debug\"\n"))
	want = `syntax error at line 3, column 1: Key 'log.level' has already been defined.`
	if err == nil || err.Error() != want {
		t.Errorf("duplicate key: got %v\nwant %s", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("/nonexistent/astguard.toml")
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want a not-exist error", err)
	}
	if want := "open /nonexistent/astguard.toml: no such file or directory"; err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
}

func TestLoadSyntaxError(t *testing.T) {
	p := writeFile(t, t.TempDir(), "astguard.toml", "[ami\n")
	_, err := Load(p)
	want := p + ":1:5: syntax error: expected '.' or ']' to end table name, but got '\\n' instead"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestLoadExample(t *testing.T) {
	t.Setenv(SecretEnv, "")
	c, err := Load(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load(example) != Default()")
	}
	if err := c.RequireSecret(); err == nil {
		t.Error("RequireSecret on the example: want an error")
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSchemaKinds(t *testing.T) {
	for key, want := range map[string]kind{
		"ami": kindTable, "ami.secret": kindString, "detector.cooldown": kindDuration,
		"detector.max_extensions": kindInt, "detector.new_source.enabled": kindBool,
		"allow.networks": kindStrings, "detector.international.high_risk_countries": kindStrings,
		"mode": kindString, "ami.reconnect_interval": kindDuration, "ami.queue_size": kindInt,
		"metrics": kindTable, "metrics.listen": kindString, "metrics.silence_alarm": kindDuration,
		"response": kindTable, "response.ban_duration": kindDuration, "response.ipv6": kindBool,
		"response.never_block": kindStrings, "response.hangup_cause": kindInt,
		"policy": kindTable, "policy.call_rate": kindTable, "policy.new_source.critical": kindStrings,
	} {
		if got, ok := schema[key]; !ok || got != want {
			t.Errorf("schema[%s] = %v, %v; want %v", key, got, ok, want)
		}
	}
	// Every key the schema accepts is in config.toml.example, and no other.
	var raw map[string]any
	if _, err := toml.DecodeFile("../../config.toml.example", &raw); err != nil {
		t.Fatal(err)
	}
	var inExample []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			inExample = append(inExample, prefix+k)
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
			}
		}
	}
	walk("", raw)
	keys := make([]string, 0, len(schema))
	for k := range schema {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	slices.Sort(inExample)
	if !slices.Equal(keys, inExample) {
		t.Errorf("schema keys and config.toml.example keys differ:\nschema  %v\nexample %v", keys, inExample)
	}
}

func th(w time.Duration, warn, crit int) detector.Threshold {
	return detector.Threshold{Window: w, Warning: warn, Critical: crit}
}

// The detector's own defaults (used by tests and benchmarks) are the
// example file's.
func TestDetectorDefaultsMatch(t *testing.T) {
	got := Default().Detector()
	want := detector.Default()
	// empty and nil lists mean the same to the detector
	if len(got.AllowExtensions)+len(got.AllowNetworks)+len(got.AllowDestinations) != 0 {
		t.Fatalf("default allow-lists are not empty: %+v", got)
	}
	got.AllowExtensions, got.AllowNetworks, got.AllowDestinations = nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config.Default().Detector()\n got %+v\nwant detector.Default()\n     %+v", got, want)
	}
}

func TestKeysAreTheSchemaLeaves(t *testing.T) {
	var want []string
	for k, kd := range schema {
		if kd != kindTable {
			want = append(want, k)
		}
	}
	got := Keys()
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Errorf("Keys() = %v\nschema leaves %v", got, want)
	}
	if got[0] != "mode" || got[1] != "ami.address" {
		t.Errorf("Keys() not in file order: %v", got[:2])
	}
}

func TestChangedAndCopyKey(t *testing.T) {
	a, b := Default(), Default()
	if c := Changed(a, b); len(c) != 0 {
		t.Fatalf("Changed(Default, Default) = %v", c)
	}
	b.Allow.Networks = nil // empty equals missing
	b.Log.Level = "debug"
	b.AMI.Secret = "other"
	b.Response.NeverBlock = []string{"192.0.2.1"}
	b.Detection.CallRate.Window = Duration(time.Hour)
	want := []string{"ami.secret", "log.level", "detector.call_rate.window", "response.never_block"}
	if c := Changed(a, b); !slices.Equal(c, want) {
		t.Errorf("Changed = %v, want %v", c, want)
	}
	for _, k := range want {
		if !a.CopyKey(k, b) {
			t.Errorf("CopyKey(%s) = false", k)
		}
	}
	if c := Changed(a, b); len(c) != 0 {
		t.Errorf("after CopyKey, Changed = %v", c)
	}
	b.Response.NeverBlock[0] = "x"
	if a.Response.NeverBlock[0] != "192.0.2.1" {
		t.Error("CopyKey shares the list")
	}
	// A whole table.
	b.AMI.Address, b.AMI.QueueSize = "pbx:5038", 2048
	if !a.CopyKey("ami", b) || a.AMI != b.AMI {
		t.Errorf("CopyKey(ami): %+v", a.AMI)
	}
	if a.CopyKey("ami.nope", b) || a.CopyKey("", b) || a.CopyKey("mode.x", b) {
		t.Error("CopyKey of a key Config does not have")
	}
}
