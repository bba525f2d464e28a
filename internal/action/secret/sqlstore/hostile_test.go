package sqlstore

import (
	"slices"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/testenv/testdb"
)

// Names an attacker may shape (a channel name comes from the SIP
// request): quotes, semicolons, %, NUL, CR/LF are refused before any
// query; names the guard accepts that mean something in SQL text (a
// MySQL # comment, a -- comment, *) reach the database only as a
// placeholder's value, so they change their own row and nothing else.
var (
	refusedNames  = []string{"200'; DROP TABLE sip; --", "200;", "20%", "200\x00", "200\r\nsecret=x", `200"`, "2 0", "200' OR '1'='1"}
	sqlishAllowed = []string{"2#0", "20--", "*", "2@0", "2.0~", "+200"}
)

// generalLog turns MariaDB's general query log on (into its table) for
// the test, and returns a function giving the text of every statement
// user sent as SQL (Query, Prepare: not the values of an Execute).
func generalLog(t *testing.T, s *testdb.Server, user string) func() []string {
	t.Helper()
	for _, q := range []string{"SET GLOBAL log_output = 'TABLE'", "SET GLOBAL general_log = 'ON'"} {
		if _, err := s.Admin().Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = s.Admin().Exec("SET GLOBAL general_log = 'OFF'") })
	return func() []string {
		rs, err := s.Admin().Query("SELECT argument FROM mysql.general_log WHERE user_host LIKE ? AND command_type IN ('Query', 'Prepare')", user+"[%")
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var out []string
		for rs.Next() {
			var a []byte
			if err := rs.Scan(&a); err != nil {
				t.Fatal(err)
			}
			out = append(out, string(a))
		}
		return out
	}
}

func TestHostileNamesFreePBX(t *testing.T) {
	t.Parallel()
	b := newFreePBX(t, 0, "")
	statements := generalLog(t, b.srv, b.user)
	for i, n := range sqlishAllowed {
		if _, err := b.su.Exec("INSERT INTO sip (id, keyword, data, flags) VALUES (?, 'secret', ?, 2)", n, "Old"+strings.Repeat("x", i)); err != nil {
			t.Fatal(err)
		}
	}
	store := b.store(t, b.srv.Port)
	checkHostile(t, store, func() []string { return b.table(t) }, "|keyword=secret|data=")
	all := statements()
	if !slices.Contains(all, "UPDATE sip SET data = ? WHERE id = ? AND keyword = 'secret'") {
		t.Errorf("the log has not the prepared UPDATE: %q", all)
	}
	for _, st := range all {
		for _, n := range append(refusedNames, sqlishAllowed...) {
			if strings.Contains(st, n) {
				t.Errorf("the name %q reached the SQL text: %q", n, st)
			}
		}
	}
}

func TestHostileNamesRealtime(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := newRealtime(t, d.start, d.schema, d.grants, "", "")
			var statements func() []string
			if b.srv.Kind == testdb.MariaDB {
				statements = generalLog(t, b.srv, b.user)
			}
			for _, n := range sqlishAllowed {
				if _, err := b.su.Exec(b.adminSQL("INSERT INTO sippeers (name, host, type, secret) VALUES (?, 'dynamic', 'friend', 'Old')"), n); err != nil {
					t.Fatal(err)
				}
			}
			store := b.store(t, b.srv.Port, "")
			checkHostile(t, store, func() []string {
				return rows(t, b.su, "SELECT name, host, type, secret, md5secret FROM sippeers ORDER BY name")
			}, "|host=")
			if statements != nil {
				all := statements()
				if !slices.Contains(all, "UPDATE `sippeers` SET secret = ? WHERE name = ?") {
					t.Errorf("the log has not the prepared UPDATE: %q", all)
				}
				for _, st := range all {
					for _, n := range append(refusedNames, sqlishAllowed...) {
						if strings.Contains(st, n) {
							t.Errorf("the name %q reached the SQL text: %q", n, st)
						}
					}
				}
			}
		})
	}
}

// adminSQL writes query's placeholders for the server.
func (b *realtimeBox) adminSQL(query string) string {
	if b.srv.Kind == testdb.Postgres {
		return strings.Replace(query, "?", "$1", 1)
	}
	return query
}

// checkHostile rotates each refused name (refused: nothing read or
// changed) and each SQL-ish allowed name (done: its own row alone
// changed, found in table() by the name followed by after).
func checkHostile(t *testing.T, store secret.Store, table func() []string, after string) {
	t.Helper()
	for _, n := range refusedNames {
		for _, tech := range []ami.Tech{ami.TechSIP, ami.TechPJSIP} {
			before := table()
			rec := &recorder{}
			res := secret.Rotator{Store: store}.Rotate(t.Context(), ami.Extension{Tech: tech, Name: n}, rec, settings)
			if res.Result != action.Skipped || res.Refusal == nil || res.Refusal.Reason != secret.UnsafeName || len(rec.lines) != 0 {
				t.Errorf("%s/%q: %+v", tech, n, res)
			}
			if after := table(); strings.Join(before, "\n") != strings.Join(after, "\n") {
				t.Errorf("%s/%q changed the table", tech, n)
			}
		}
	}
	for _, n := range sqlishAllowed {
		before := table()
		rec := &recorder{}
		res := secret.Rotator{Store: store}.Rotate(t.Context(), ami.Extension{Tech: ami.TechSIP, Name: n}, rec, settings)
		if res.Result != action.Done {
			t.Errorf("SIP/%q: %+v", n, res)
			continue
		}
		added, removed := changed(before, table())
		if len(added) != 1 || len(removed) != 1 || !strings.Contains(removed[0], "="+n+after) || !strings.Contains(added[0], rec.last(t).Secret) {
			t.Errorf("SIP/%q changed %q, removed %q; want its own row alone", n, added, removed)
		}
	}
}
