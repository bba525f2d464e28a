package sqlstore

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/actiontest"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/testenv/testdb"
)

// The database servers are started once for the package, at the first
// test that needs one, and stopped here.
func TestMain(m *testing.M) {
	code := m.Run()
	testdb.Stop()
	os.Exit(code)
}

var (
	sip200   = ami.Extension{Tech: ami.TechSIP, Name: "200"}
	pjsip300 = ami.Extension{Tech: ami.TechPJSIP, Name: "300"}
	settings = secret.Settings{Timeout: time.Minute, Retry: action.Backoff{Attempts: 3, First: 10 * time.Millisecond}}
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// readmeGrants returns the GRANT statements of the README's code blocks
// that hold match, made to run on the test's server: the database
// `asterisk` is the test's (DB), the user 'astguard'@'localhost' or
// astguard is the test's (USER). The README's grants are what a test
// user gets, so that a grant the guard lacks fails a test.
func readmeGrants(t *testing.T, match string) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "../../../../README.md")))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(l, "GRANT ") || !strings.Contains(l, match) {
			continue
		}
		l = strings.TrimSuffix(l, ";")
		l = strings.ReplaceAll(l, " asterisk.", " DB.")
		l = strings.ReplaceAll(l, "'astguard'@'localhost'", "USER")
		l = strings.ReplaceAll(l, " TO astguard", " TO USER")
		out = append(out, l)
	}
	if len(out) == 0 {
		t.Fatalf("README.md has no GRANT ... %s", match)
	}
	return out
}

// rows returns every row of a table, each as its columns joined, in order:
// the whole table, to see that only one row changed.
func rows(t *testing.T, db *sql.DB, query string) []string {
	t.Helper()
	rs, err := db.Query(query)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	cols, _ := rs.Columns()
	var out []string
	for rs.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rs.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(cols))
		for i, v := range vals {
			parts[i] = cols[i] + "=" + v.String
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// changed returns the rows of after that are not in before, and those of
// before that are not in after.
func changed(before, after []string) (added, removed []string) {
	for _, r := range after {
		if !slices.Contains(before, r) {
			added = append(added, r)
		}
	}
	for _, r := range before {
		if !slices.Contains(after, r) {
			removed = append(removed, r)
		}
	}
	return added, removed
}

// recorder is a secrets file that keeps its lines.
type recorder struct {
	mu    sync.Mutex
	lines []secret.Line
}

func (r *recorder) Record(l secret.Line) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, l)
	return "/var/lib/astguard/secrets.jsonl", nil
}

// last returns the last line: the new secret and its status.
func (r *recorder) last(t *testing.T) secret.Line {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.lines) == 0 {
		t.Fatal("nothing recorded")
	}
	return r.lines[len(r.lines)-1]
}

// noSecret checks that no secret, old or new, is in the outcome.
func noSecret(t *testing.T, res secret.Result, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(res.Detail, s) || res.Err != nil && strings.Contains(res.Err.Error(), s) {
			t.Errorf("a secret leaks into the outcome: %+v", res.Outcome)
		}
	}
}

// reloadScript writes a stand-in for `fwconsole reload` that appends its
// arguments and its exit status to a record file, prints out and exits
// with status. It returns the script's path and the record's.
func reloadScript(t *testing.T, status int, out string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	script, record := filepath.Join(dir, "fwconsole"), filepath.Join(dir, "record")
	body := fmt.Sprintf("#!/bin/sh\necho \"args: $*\" >> %s\necho %q\necho \"exit: %d\" >> %s\nexit %d\n", record, out, status, record, status)
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	return script, record
}

// reloads returns the lines of a reload record ("" when it never ran).
func reloads(t *testing.T, record string) []string {
	t.Helper()
	b, err := os.ReadFile(record)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// asterisk is a fake Asterisk 22 for the stores' AMI actions, answering
// as the recorded one did: PJSIPShowEndpoint of 300 (the recorded reply,
// its AuthDetail showing the password Asterisk has), GetConfig,
// SorceryMemoryCacheExpireObject (answered as res_sorcery_memory_cache.c
// does). password says where Asterisk takes auth 300-auth's password
// from: the realtime row (through the memory cache named cache, when
// set), or what the last reload loaded.
type asterisk struct {
	password func() (string, bool)
	cache    string
	// file returns the text of a file for GetConfig (false: not found).
	file func(name string) (string, bool)
	// shared adds an endpoint 399 that uses 300's auth too.
	shared bool
	// fullBackend makes the cache one with full_backend_cache, which
	// takes no per-object expiry.
	fullBackend bool

	mu     sync.Mutex
	cached map[string]string
}

func (f *asterisk) doer(t *testing.T) *actiontest.Doer {
	rec := actiontest.LoadDialog(t, "asterisk-22/actions-dialog.txt").Reply(t, "pjsip-endpoint")
	f.cached = map[string]string{}
	fail := func(msg string) actiontest.Reply {
		return actiontest.Reply{Resp: ami.Response{Headers: []ami.Header{{Key: "Response", Value: "Error"}, {Key: "Message", Value: msg}}}}
	}
	return &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch a.Name {
		case "PJSIPShowEndpoint":
			ep := actiontest.Header(a, "Endpoint")
			if ep != "300" {
				return fail("Unable to retrieve endpoint " + ep)
			}
			pw, ok := f.cached["300-auth"]
			if !ok {
				if pw, ok = f.password(); !ok {
					// Asterisk finds no such auth: no AuthDetail.
					return withoutEvent(rec, "AuthDetail")
				}
				if f.cache != "" {
					f.cached["300-auth"] = pw
				}
			}
			return rec.With("AuthDetail", "Password", pw)
		case "PJSIPShowEndpoints":
			// As pjsip_configuration.c's format_ami_endpoints.
			item := func(ep, auth string) ami.Response {
				return ami.Response{Headers: []ami.Header{{Key: "Event", Value: "EndpointList"}, {Key: "ObjectType", Value: "endpoint"},
					{Key: "ObjectName", Value: ep}, {Key: "Transport", Value: ""}, {Key: "Aor", Value: ep}, {Key: "Auths", Value: auth},
					{Key: "OutboundAuths", Value: ""}, {Key: "Contacts", Value: ""}, {Key: "DeviceState", Value: "Unavailable"}, {Key: "ActiveChannels", Value: "0"}}}
			}
			r := actiontest.Reply{Resp: ami.Response{Headers: []ami.Header{{Key: "Response", Value: "Success"}, {Key: "EventList", Value: "start"},
				{Key: "Message", Value: "A listing of Endpoints follows, presented as EndpointList events"}}},
				Items: []ami.Response{item("300", "300-auth"), item("301", "301-auth")}}
			if f.shared {
				r.Items = append(r.Items, item("399", "399-auth,300-auth"))
			}
			return r
		case "SorceryMemoryCacheExpireObject":
			switch {
			case actiontest.Header(a, "Cache") != f.cache || f.cache == "":
				return fail("The provided cache does not exist")
			case f.fullBackend:
				return fail("Due to full backend caching per-object expiration is not available, consider using SorceryMemoryCachePopulate or SorceryMemoryCacheExpire instead")
			case f.cached[actiontest.Header(a, "Object")] == "":
				return fail("The provided object could not be expired from the cache")
			}
			delete(f.cached, actiontest.Header(a, "Object"))
			return actiontest.Reply{Resp: ami.Response{Headers: []ami.Header{{Key: "Response", Value: "Success"}, {Key: "Message", Value: "The provided object was expired from the cache"}}}}
		case "GetConfig":
			var text string
			ok := false
			if f.file != nil {
				text, ok = f.file(actiontest.Header(a, "Filename"))
			}
			if !ok {
				return fail("Config file not found")
			}
			return actiontest.Reply{Resp: actiontest.GetConfig(text, actiontest.Header(a, "Category"))}
		}
		return actiontest.Reply{Err: errors.New("unexpected " + a.Name)}
	}}
}

// openAs opens the store's connection to database name of s as user.
func openAs(t *testing.T, s *testdb.Server, port int, name, user, password string) *DB {
	t.Helper()
	scheme := "mysql"
	if s.Kind == testdb.Postgres {
		scheme = "postgres"
	}
	url := fmt.Sprintf("%s://%s@127.0.0.1:%d/%s", scheme, user, port, name)
	if s.Kind == testdb.Postgres {
		url += "?sslmode=disable"
	}
	d, err := config.ParseDSN(url)
	if err != nil {
		t.Fatal(err)
	}
	db, err := Open(d, config.Secret(password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// value reads one value.
func value(t *testing.T, db *sql.DB, query string, args ...any) string {
	t.Helper()
	var v sql.NullString
	if err := db.QueryRowContext(context.Background(), query, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return v.String
}

// withoutEvent returns r without its list items of event.
func withoutEvent(r actiontest.Reply, event string) actiontest.Reply {
	out := r
	out.Items = nil
	for _, it := range r.Items {
		if it.Get("Event") != event {
			out.Items = append(out.Items, it)
		}
	}
	return out
}
