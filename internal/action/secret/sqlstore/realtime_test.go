package sqlstore

import (
	"database/sql"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/actiontest"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/testenv/testdb"
)

// realtimeBox is a realtime database (Asterisk's ps_auths and sippeers)
// in MariaDB or PostgreSQL, the guard's user with the README's grants,
// and an Asterisk that reads auth 300-auth from the table, through a
// memory cache named cache when set.
type realtimeBox struct {
	srv        *testdb.Server
	name       string
	su         *sql.DB
	user, pass string
	ast        *asterisk
	doer       *actiontest.Doer
}

// dialects are the realtime databases the guard speaks.
var dialects = []struct {
	name   string
	start  func(testing.TB) *testdb.Server
	schema string
	grants string // what the README's grants hold
}{
	{"mariadb", testdb.StartMariaDB, "testdata/realtime-mysql.sql", "ON asterisk."},
	{"postgres", testdb.StartPostgres, "testdata/realtime-postgres.sql", " TO astguard"},
}

func newRealtime(t *testing.T, start func(testing.TB) *testdb.Server, schema, grants, cache string, sipConf string) *realtimeBox {
	t.Helper()
	s := start(t)
	b := &realtimeBox{srv: s}
	b.name = s.NewDatabase(t, readFile(t, schema))
	b.su = s.Superuser(t, b.name)
	var gs []string
	for _, g := range readmeGrants(t, grants) {
		if strings.Contains(g, "ps_auths") || strings.Contains(g, "sippeers") {
			gs = append(gs, g)
		}
	}
	b.user, b.pass = s.NewUser(t, b.name, gs...)
	b.ast = &asterisk{
		cache: cache,
		password: func() (string, bool) {
			var pw sql.NullString
			err := b.su.QueryRow("SELECT password FROM ps_auths WHERE id = '300-auth'").Scan(&pw)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				t.Error(err)
			}
			return pw.String, err == nil
		},
		file: func(name string) (string, bool) {
			if name == "sip.conf" && sipConf != "" {
				return sipConf, true
			}
			return "", false
		},
	}
	b.doer = b.ast.doer(t)
	return b
}

func (b *realtimeBox) value(t *testing.T, query string) string { return value(t, b.su, query) }

func (b *realtimeBox) store(t *testing.T, port int, cache string) *Realtime {
	return &Realtime{DB: openAs(t, b.srv, port, b.name, b.user, b.pass), AMI: b.doer, Auths: "ps_auths", Peers: "sippeers", AuthCache: cache}
}

func (b *realtimeBox) tables(t *testing.T) ([]string, []string) {
	return rows(t, b.su, "SELECT id, auth_type, md5_cred, password, realm, username FROM ps_auths ORDER BY id"),
		rows(t, b.su, "SELECT id, name, host, type, context, secret, md5secret FROM sippeers ORDER BY id")
}

// A rotation in realtime tables changes exactly the one row, on MariaDB
// and PostgreSQL alike, expires a cached auth, and is applied once the
// check sees the new secret.
func TestRealtimeRotates(t *testing.T) {
	for _, d := range dialects {
		for _, tc := range []struct {
			name        string
			ext         ami.Extension
			cache       string // Asterisk's memory cache, and the guard's auth_cache
			sipConf     string
			old, detail string
		}{
			{"PJSIP", pjsip300, "", "", "Leaky300", "checked: PJSIPShowEndpoint 300 shows it in auth 300-auth"},
			{"PJSIP behind a cache", pjsip300, "auths", "", "Leaky300",
				"new password of 300-auth in table ps_auths, reloaded with SorceryMemoryCacheExpireObject of cache auths; checked: PJSIPShowEndpoint 300 shows it in auth 300-auth"},
			{"SIP", sip200, "", "[general]\nrtcachefriends=no\n", "Leaky200", "checked: the row of 200 in table sippeers read back holds it; the new"},
			{"SIP with rtcachefriends", sip200, "", "[general]\nrtcachefriends=yes\n", "Leaky200",
				`(rtcachefriends=yes in sip.conf) and accepts the old secret until you run: asterisk -rx "sip prune realtime peer 200"`},
		} {
			t.Run(d.name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				b := newRealtime(t, d.start, d.schema, d.grants, tc.cache, tc.sipConf)
				auths, peers := b.tables(t)
				rec := &recorder{}
				res := secret.Rotator{Store: b.store(t, b.srv.Port, tc.cache)}.Rotate(t.Context(), tc.ext, rec, settings)
				if res.Result != action.Done || !strings.Contains(res.Detail, tc.detail) {
					t.Fatalf("result %+v\nwant detail with %q", res, tc.detail)
				}
				line := rec.last(t)
				if line.Status != secret.Applied {
					t.Errorf("recorded %s", line.Status)
				}
				auths2, peers2 := b.tables(t)
				mine, theirs := auths, peers
				mine2, theirs2 := auths2, peers2
				if tc.ext.Tech == ami.TechSIP {
					mine, theirs, mine2, theirs2 = peers, auths, peers2, auths2
				}
				added, removed := changed(mine, mine2)
				if len(added) != 1 || len(removed) != 1 || !strings.Contains(removed[0], "="+tc.old+"|") && !strings.HasSuffix(removed[0], "="+tc.old) ||
					added[0] != strings.Replace(removed[0], "="+tc.old, "="+line.Secret, 1) {
					t.Errorf("rows changed: %q added, %q removed; want the one row with %s", added, removed, tc.ext)
				}
				if !slices.Equal(theirs, theirs2) {
					t.Error("the other table changed")
				}
				if n := b.doer.Count("SorceryMemoryCacheExpireObject"); n != 0 && tc.cache == "" || tc.cache != "" && n != 1 {
					t.Errorf("%d SorceryMemoryCacheExpireObject", n)
				}
				for _, a := range b.doer.Sent() {
					if a.Name == "SorceryMemoryCacheExpireObject" && (actiontest.Header(a, "Cache") != tc.cache || actiontest.Header(a, "Object") != "300-auth") {
						t.Errorf("expired %v", a.Headers)
					}
				}
				noSecret(t, res, tc.old, line.Secret)
			})
		}
	}
}

// A memory cache the guard was not told of keeps the old password in
// Asterisk: the check fails, and says what to do; the table holds the new
// one, recorded as failed.
func TestRealtimeUnknownCache(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := newRealtime(t, d.start, d.schema, d.grants, "auths", "")
			rec := &recorder{}
			res := secret.Rotator{Store: b.store(t, b.srv.Port, "")}.Rotate(t.Context(), pjsip300, rec, settings)
			if res.Result != action.Failed || !errors.Is(res.Err, secret.ErrNotTaken) || b.doer.Count("PJSIPShowEndpoint") != 1+settings.Retry.Attempts {
				t.Fatalf("result %+v after %d PJSIPShowEndpoint", res, b.doer.Count("PJSIPShowEndpoint"))
			}
			if !strings.Contains(res.Detail, "table ps_auths holds the new password, but Asterisk still has another for auth 300-auth (a sorcery memory cache in front of the auths? name it in secrets.realtime.auth_cache)") {
				t.Errorf("detail %q", res.Detail)
			}
			if line := rec.last(t); line.Status != secret.Failed || b.value(t, "SELECT password FROM ps_auths WHERE id = '300-auth'") != line.Secret {
				t.Errorf("recorded %s; the table should hold the new password", line.Status)
			}
		})
	}
}

// A cache that Asterisk will not expire by object (full_backend_cache):
// failed, saying the table holds the new password and what to run; the
// change is not tried again.
func TestRealtimeFullBackendCache(t *testing.T) {
	t.Parallel()
	b := newRealtime(t, testdb.StartMariaDB, "testdata/realtime-mysql.sql", "ON asterisk.", "auths", "")
	b.ast.fullBackend = true
	rec := &recorder{}
	res := secret.Rotator{Store: b.store(t, b.srv.Port, "auths")}.Rotate(t.Context(), pjsip300, rec, settings)
	if res.Result != action.Failed || res.Retryable || b.doer.Count("SorceryMemoryCacheExpireObject") != 1 ||
		!strings.HasSuffix(res.Detail, `: table ps_auths holds the new password, but Asterisk's memory cache auths may keep the old one until the object expires; by hand: run asterisk -rx "sorcery memory cache populate auths"`) {
		t.Fatalf("result %+v", res)
	}
	if line := rec.last(t); line.Status != secret.Failed || b.value(t, "SELECT password FROM ps_auths WHERE id = '300-auth'") != line.Secret {
		t.Errorf("recorded %s; the table should hold the new password", line.Status)
	}
}

// An auth another endpoint uses too is refused: its new password would
// lock that one out.
func TestRealtimeRefusesSharedAuth(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := newRealtime(t, d.start, d.schema, d.grants, "", "")
			b.ast.shared = true
			auths, peers := b.tables(t)
			res := secret.Rotator{Store: b.store(t, b.srv.Port, "")}.Rotate(t.Context(), pjsip300, &recorder{}, settings)
			if res.Result != action.Skipped || res.Refusal == nil || res.Refusal.Reason != secret.SharedAuth ||
				res.Detail != "cannot rotate here: auth 300-auth is shared by endpoints 300, 399: changing it would lock them all out; give endpoint 300 an auth of its own" {
				t.Fatalf("result %+v", res)
			}
			if a, p := b.tables(t); !slices.Equal(a, auths) || !slices.Equal(p, peers) {
				t.Error("the tables changed")
			}
		})
	}
}

// What fails leaves the rows as they were: a peer or auth not in its
// table, the database going away between the plan and the change. A
// digest that wins over the secret is refused.
func TestRealtimeFailures(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			b := newRealtime(t, d.start, d.schema, d.grants, "", "")
			auths, peers := b.tables(t)
			same := func(what string) {
				t.Helper()
				a, p := b.tables(t)
				if !slices.Equal(a, auths) || !slices.Equal(p, peers) {
					t.Errorf("%s: the tables changed", what)
				}
			}
			rot := secret.Rotator{Store: b.store(t, b.srv.Port, "")}

			res := rot.Rotate(t.Context(), ami.Extension{Tech: ami.TechSIP, Name: "202"}, &recorder{}, settings)
			if res.Result != action.Failed || res.Retryable || res.Err == nil || res.Err.Error() != "table sippeers has no peer 202" {
				t.Errorf("a missing peer: %+v", res)
			}
			same("a missing peer")

			proxy := b.srv.NewProxy(t)
			res = secret.Rotator{Store: afterPlan{b.store(t, proxy.Port(), ""), proxy.Cut}}.Rotate(t.Context(), sip200, &recorder{}, settings)
			if res.Result != action.Failed || !res.Retryable || !strings.Contains(res.Detail, "the change did not reach the table: the old secret is still in use") {
				t.Errorf("a dropped connection: %+v", res)
			}
			same("a dropped connection")

			if _, err := b.su.Exec("UPDATE sippeers SET md5secret = '0123456789abcdef0123456789abcdef' WHERE name = '201'"); err != nil {
				t.Fatal(err)
			}
			res = rot.Rotate(t.Context(), ami.Extension{Tech: ami.TechSIP, Name: "201"}, &recorder{}, settings)
			if res.Result != action.Skipped || res.Refusal == nil || res.Refusal.Reason != secret.MD5Secret {
				t.Errorf("md5secret: %+v", res)
			}
			if _, err := b.su.Exec("UPDATE ps_auths SET md5_cred = '0123456789abcdef0123456789abcdef' WHERE id = '300-auth'"); err != nil {
				t.Fatal(err)
			}
			res = rot.Rotate(t.Context(), pjsip300, &recorder{}, settings)
			if res.Result != action.Skipped || res.Refusal == nil || res.Refusal.Reason != secret.Digest {
				t.Errorf("md5_cred: %+v", res)
			}
			if _, err := b.su.Exec("DELETE FROM ps_auths WHERE id = '300-auth'"); err != nil {
				t.Fatal(err)
			}
			auths, peers = b.tables(t)
			res = rot.Rotate(t.Context(), pjsip300, &recorder{}, settings)
			if res.Result != action.Failed || res.Retryable || res.Err == nil || res.Err.Error() != "table ps_auths has no auth 300-auth (the auth of endpoint 300)" {
				t.Errorf("a missing auth: %+v", res)
			}
			res = rot.Rotate(t.Context(), ami.Extension{Tech: ami.TechPJSIP, Name: "399"}, &recorder{}, settings)
			if res.Result != action.Failed || res.Retryable || res.Err == nil || !strings.HasPrefix(res.Err.Error(), "Asterisk has no PJSIP endpoint 399") {
				t.Errorf("an endpoint Asterisk does not know: %+v", res)
			}
			same("a missing auth")
		})
	}
}
