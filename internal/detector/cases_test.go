package detector_test

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/replay"
)

var update = flag.Bool("update", false, "rewrite the want.txt files of testdata/cases")

// Each directory of testdata/cases is a case: input.ami (or a file
// "transcript" naming a transcript elsewhere in the repository), an optional
// config.toml, and want.txt listing every alert the detector must raise, one
// per line. `go test ./internal/detector -run TestCases -update` rewrites
// want.txt; review the diff before committing it.
func TestCases(t *testing.T) {
	dirs, err := filepath.Glob("testdata/cases/*")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatal("no cases in testdata/cases")
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			got := runCase(t, dir)
			wantFile := filepath.Join(dir, "want.txt")
			if *update {
				if err := os.WriteFile(wantFile, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(wantFile)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("alerts differ from %s\n--- got\n%s--- want\n%s", wantFile, got, want)
			}
		})
	}
}

func caseInput(t *testing.T, dir string) string {
	t.Helper()
	if ref, err := os.ReadFile(filepath.Join(dir, "transcript")); err == nil {
		return filepath.Join(dir, strings.TrimSpace(string(ref)))
	}
	return filepath.Join(dir, "input.ami")
}

func caseConfig(t *testing.T, dir string) detector.Config {
	t.Helper()
	path := filepath.Join(dir, "config.toml")
	if _, err := os.Stat(path); err != nil {
		return config.Default().Detector()
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c.Detector()
}

func runCase(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	_, err := replay.File(caseInput(t, dir), caseConfig(t, dir), func(a *detector.Alert) {
		b.WriteString(line(a))
		b.WriteByte('\n')
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// line is the compact golden form of an alert.
func line(a *detector.Alert) string {
	var b strings.Builder
	fmt.Fprintf(&b, "seq=%d %s %s", a.Seq, a.Severity, a.Rule)
	if a.IsExtension() {
		fmt.Fprintf(&b, " %s/%s", a.Tech, a.Extension)
	} else {
		fmt.Fprintf(&b, " ip=%s", a.IP)
	}
	fmt.Fprintf(&b, " count=%d window=%s", a.Count, a.Window)
	for _, l := range []struct {
		name  string
		addrs []netip.Addr
	}{{"sources", a.Sources}, {"contacts", a.Contacts}} {
		if len(l.addrs) > 0 {
			ss := make([]string, len(l.addrs))
			for i, s := range l.addrs {
				ss[i] = s.String()
			}
			fmt.Fprintf(&b, " %s=%s", l.name, strings.Join(ss, ","))
		}
	}
	if len(a.Accounts) > 0 {
		fmt.Fprintf(&b, " accounts=%s", strings.Join(a.Accounts, ","))
	}
	if len(a.Numbers) > 0 {
		fmt.Fprintf(&b, " numbers=%s", strings.Join(a.Numbers, ","))
	}
	if a.Note != "" {
		b.WriteString(" (capped)")
	}
	return b.String()
}
