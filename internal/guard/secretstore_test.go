package guard

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/policy"
	"github.com/astguard/astguard/internal/testenv/testdb"
)

// The schemas of the secret stores' tests: FreePBX core's sip table with
// its four extensions, and Asterisk realtime's ps_auths and sippeers.
const storeTestdata = "../action/secret/sqlstore/testdata/"

// readmeGrants returns the README's GRANT statements that hold match,
// made to run on a test server (DB: the test's database, USER: the
// test's user): the guard runs with exactly what the README grants.
func readmeGrants(t *testing.T, match string) []string {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(l, "GRANT ") || !strings.Contains(l, match) {
			continue
		}
		l = strings.TrimSuffix(l, ";")
		l = strings.ReplaceAll(l, " asterisk.", " DB.")
		l = strings.ReplaceAll(l, "'astguard'@'localhost'", "USER")
		out = append(out, strings.ReplaceAll(l, " TO astguard", " TO USER"))
	}
	if len(out) == 0 {
		t.Fatalf("README.md has no GRANT ... %s", match)
	}
	return out
}

// tableRows returns every row of a query, each as its columns joined.
func tableRows(t *testing.T, db *sql.DB, query string) []string {
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
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rs.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = v.String
		}
		out = append(out, strings.Join(parts, "|"))
	}
	return out
}

// setConf returns conf with key in [section] (the first section of that
// name holding key) set to value.
func setConf(conf, section, key, value string) string {
	var out []string
	in, done := false, false
	for _, l := range strings.Split(conf, "\n") {
		if strings.HasPrefix(l, "[") {
			in = strings.HasPrefix(l, "["+section+"]")
		}
		if k, _, ok := strings.Cut(l, "="); in && !done && ok && strings.TrimSpace(k) == key {
			l, done = key+"="+value, true
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// appliedSecrets returns the secrets file's applied secrets by extension.
func appliedSecrets(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var fl secret.FileLine
		if err := json.Unmarshal([]byte(l), &fl); err != nil {
			t.Fatal(err)
		}
		if fl.Status == secret.Applied {
			if _, twice := out[fl.Extension]; twice {
				t.Errorf("%s applied twice", fl.Extension)
			}
			out[fl.Extension] = fl.Secret
		}
	}
	return out
}

// storeCase is one end-to-end run of attack-mixed.ami in enforce mode
// against a PBX keeping its secrets in a database.
type storeCase struct {
	srvOpts amitest.Options
	// configure sets [secrets] once the fake Asterisk listens.
	configure func(cfg *config.Config, srv *amitest.Server)
}

// runStoreCase replays the attack, waits for both stolen extensions'
// rotations, stops the guard and returns the harness and each
// extension's rotate_secret outcomes.
func runStoreCase(t *testing.T, c storeCase) (*harness, map[policy.Key][]Outcome) {
	t.Helper()
	data, err := os.ReadFile(transcripts + "attack-mixed.ami")
	if err != nil {
		t.Fatal(err)
	}
	opts := c.srvOpts
	opts.Transcript, opts.Speed, opts.AutoPlay = bytes.NewReader(data), 4, true
	opts.Username, opts.Secret = "guard", "guardpass"
	srv, err := amitest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Mode = config.ModeEnforce
	cfg.AMI.Address, cfg.AMI.Secret = srv.Addr(), "guardpass"
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.Firewall = config.FirewallDryRun
	cfg.Response.RetryBackoff = config.Duration(20 * time.Millisecond)
	cfg.Secrets.FreePBX.Conf = filepath.Join(dir, "no-freepbx.conf")
	c.configure(cfg, srv)
	h := runGuard(t, srv, cfg, nil, nil)
	waitFor(t, "both rotations", 60*time.Second, func() bool {
		return len(h.outcomes.list(func(o *Outcome) bool { return o.Action == policy.RotateSecret })) >= 2
	})
	select {
	case <-srv.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("transcript not streamed")
	}
	<-h.guard
	h.stop(t)
	out := map[policy.Key][]Outcome{}
	for _, o := range h.outcomes.list(func(o *Outcome) bool { return o.Action == policy.RotateSecret }) {
		out[o.Key] = append(out[o.Key], o)
	}
	return h, out
}

// checkRotations checks that each stolen extension got one rotation,
// done, checked as want says, with the secret the secrets file holds, and
// that no secret (old or new) or database password is in the log. It
// returns the new secrets.
func checkRotations(t *testing.T, h *harness, got map[policy.Key][]Outcome, want map[policy.Key]string, hidden ...string) map[string]string {
	t.Helper()
	applied := appliedSecrets(t, h.cfg.Response.SecretsFile)
	if len(got) != len(want) || len(applied) != len(want) {
		t.Errorf("rotations of %d extensions, %d applied in the secrets file; want %d", len(got), len(applied), len(want))
	}
	for key, checked := range want {
		os := got[key]
		if len(os) != 1 || os[0].Result != policy.Done || !strings.Contains(os[0].Detail, checked) {
			t.Errorf("%s: %+v\nwant one, done, with %q", key, os, checked)
		}
		if applied[key.String()] == "" {
			t.Errorf("%s: no applied secret in the secrets file", key)
		}
	}
	if n := updateConfigs(h.srv); len(n) != 0 {
		t.Errorf("UpdateConfig sent: %v; the files are not where the secrets live", n)
	}
	logs := h.logs.String()
	for _, s := range append(slices.Collect(mapValues(applied)), append(hidden, "Leaky200", "Leaky300", "guardpass")...) {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("a secret appears in the log")
		}
	}
	return applied
}

func mapValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// FreePBX: MariaDB with FreePBX core's sip table, /etc/freepbx.conf
// naming the guard's user (with the README's grants), and `fwconsole
// reload` standing in as a script that records its arguments and exit
// status and has the fake Asterisk reload everything over AMI, which
// writes its files again from the table. auto picks FreePBX; each stolen
// extension's secret changes in its row alone, the reload runs once per
// rotation, and Asterisk shows the new secret.
func TestEndToEndFreePBX(t *testing.T) {
	t.Parallel()
	s := testdb.StartMariaDB(t)
	db := s.NewDatabase(t, readFileT(t, storeTestdata+"freepbx-schema.sql"))
	su := s.Superuser(t, db)
	user, pass := s.NewUser(t, db, readmeGrants(t, "ON asterisk.sip TO")...)
	before := tableRows(t, su, "SELECT id, keyword, data, flags FROM sip ORDER BY id, keyword")
	devices := tableRows(t, su, "SELECT * FROM devices ORDER BY id")
	secretOf := func() map[string]string {
		m := map[string]string{}
		for _, r := range tableRows(t, su, "SELECT id, data FROM sip WHERE keyword = 'secret'") {
			id, v, _ := strings.Cut(r, "|")
			m[id] = v
		}
		return m
	}
	dir := t.TempDir()
	record := filepath.Join(dir, "record")
	script := filepath.Join(dir, "fwconsole")
	c := storeCase{
		srvOpts: amitest.Options{Regenerate: func() (map[string]string, error) {
			sec := secretOf()
			sip, pj := amitest.DefaultSIPConf, amitest.DefaultPJSIPConf
			var add strings.Builder
			for _, id := range []string{"200", "201"} {
				sip = setConf(sip, id, "secret", sec[id])
				fmt.Fprintf(&add, "[%s]\ntype=friend\nsecret=%s\n", id, sec[id])
			}
			for _, id := range []string{"300", "301"} {
				pj = setConf(pj, id+"-auth", "password", sec[id])
			}
			return map[string]string{"sip.conf": sip, "pjsip.conf": pj, "sip_additional.conf": add.String()}, nil
		}},
		configure: func(cfg *config.Config, srv *amitest.Server) {
			port := strings.TrimPrefix(srv.Addr(), "127.0.0.1:")
			body := "#!/bin/bash\necho \"args: $*\" >> " + record + "\n" +
				"exec 3<>/dev/tcp/127.0.0.1/" + port + " || { echo 'exit: 1' >> " + record + "; exit 1; }\n" +
				"printf 'Action: Login\\r\\nUsername: guard\\r\\nSecret: guardpass\\r\\nEvents: off\\r\\n\\r\\nAction: Reload\\r\\nActionID: fwconsole\\r\\n\\r\\nAction: Logoff\\r\\n\\r\\n' >&3\n" +
				"cat <&3 >/dev/null\necho 'exit: 0' >> " + record + "\n"
			if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(dir, "freepbx.conf")
			php := fmt.Sprintf("<?php\n$amp_conf['AMPDBUSER'] = '%s';\n$amp_conf['AMPDBPASS'] = '%s';\n$amp_conf['AMPDBHOST'] = '127.0.0.1';\n"+
				"$amp_conf['AMPDBPORT'] = '%d';\n$amp_conf['AMPDBNAME'] = '%s';\n$amp_conf['AMPDBENGINE'] = 'mysql';\n"+
				"$amp_conf['datasource'] = ''; //for sqlite3\n\nrequire_once('/var/www/html/admin/bootstrap.php');\n?>\n", user, pass, s.Port, db)
			if err := os.WriteFile(conf, []byte(php), 0o640); err != nil {
				t.Fatal(err)
			}
			cfg.Secrets.FreePBX.Conf = conf
			cfg.Secrets.FreePBX.ReloadCommand = []string{script, "reload"}
		},
	}
	h, got := runStoreCase(t, c)
	applied := checkRotations(t, h, got, map[policy.Key]string{
		sip200Key:   "checked: GetConfig of sip_additional.conf shows it in [200]",
		pjsip300Key: "checked: PJSIPShowEndpoint 300 shows it in auth 300-auth",
	}, pass)
	// Exactly the two secret rows changed, to the secrets file's secrets.
	want := slices.Clone(before)
	for i, r := range want {
		for id, ext := range map[string]string{"200": "SIP/200", "300": "PJSIP/300"} {
			if strings.HasPrefix(r, id+"|secret|") {
				parts := strings.Split(r, "|")
				parts[2] = applied[ext]
				want[i] = strings.Join(parts, "|")
			}
		}
	}
	if after := tableRows(t, su, "SELECT id, keyword, data, flags FROM sip ORDER BY id, keyword"); !slices.Equal(after, want) {
		t.Error("the sip table: other rows changed, or the two secret rows do not hold the secrets file's")
	}
	if !slices.Equal(devices, tableRows(t, su, "SELECT * FROM devices ORDER BY id")) {
		t.Error("the devices table changed")
	}
	if rec, _ := os.ReadFile(record); string(rec) != "args: reload\nexit: 0\nargs: reload\nexit: 0\n" || h.srv.Regenerated() != 2 {
		t.Errorf("reload record %q, %d regenerated; want one reload per rotation", rec, h.srv.Regenerated())
	}
	if !strings.Contains(h.logs.String(), `"store":"freepbx"`) {
		t.Error("the start does not say the FreePBX store was chosen")
	}
}

// Realtime in MariaDB, the auths behind a sorcery memory cache, and in
// PostgreSQL without one: each stolen extension's row alone changes, the
// cached auth is expired, and the check sees the new secret.
func TestEndToEndRealtime(t *testing.T) {
	for _, tc := range []struct {
		name   string
		start  func(testing.TB) *testdb.Server
		schema string
		grants string
		scheme string
		cache  string
	}{
		{"mariadb with a cache", testdb.StartMariaDB, "realtime-mysql.sql", "ON asterisk.", "mysql", "auths"},
		{"postgres", testdb.StartPostgres, "realtime-postgres.sql", " TO astguard", "postgres", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := tc.start(t)
			db := s.NewDatabase(t, readFileT(t, storeTestdata+tc.schema))
			su := s.Superuser(t, db)
			var grants []string
			for _, g := range readmeGrants(t, tc.grants) {
				if strings.Contains(g, "ps_auths") || strings.Contains(g, "sippeers") {
					grants = append(grants, g)
				}
			}
			user, pass := s.NewUser(t, db, grants...)
			ph := "?"
			if s.Kind == testdb.Postgres {
				ph = "$1"
			}
			auths := tableRows(t, su, "SELECT id, auth_type, md5_cred, password, realm, username FROM ps_auths ORDER BY id")
			peers := tableRows(t, su, "SELECT id, name, host, type, context, secret, md5secret FROM sippeers ORDER BY id")
			rt := &amitest.Realtime{
				Auth: func(id string) (map[string]string, bool) {
					var pw, user, typ sql.NullString
					if err := su.QueryRow("SELECT password, username, auth_type FROM ps_auths WHERE id = "+ph, id).Scan(&pw, &user, &typ); err != nil {
						return nil, false
					}
					return map[string]string{"password": pw.String, "username": user.String, "auth_type": typ.String}, true
				},
				Peer: func(name string) (string, string, bool) {
					var sec, md5 sql.NullString
					if err := su.QueryRow("SELECT secret, md5secret FROM sippeers WHERE name = "+ph, name).Scan(&sec, &md5); err != nil {
						return "", "", false
					}
					return sec.String, md5.String, true
				},
				AuthCache: tc.cache,
			}
			pwFile := filepath.Join(t.TempDir(), "db-password")
			if err := os.WriteFile(pwFile, []byte(pass+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			h, got := runStoreCase(t, storeCase{srvOpts: amitest.Options{Realtime: rt}, configure: func(cfg *config.Config, _ *amitest.Server) {
				cfg.Secrets.Store = config.StoreRealtime
				cfg.Secrets.Realtime.DSN = tc.scheme + "://" + user + "@127.0.0.1:" + strconv.Itoa(s.Port) + "/" + db
				if s.Kind == testdb.Postgres {
					cfg.Secrets.Realtime.DSN += "?sslmode=disable"
				}
				cfg.Secrets.Realtime.PasswordFile = pwFile
				cfg.Secrets.Realtime.AuthCache = tc.cache
			}})
			applied := checkRotations(t, h, got, map[policy.Key]string{
				sip200Key:   "checked: the row of 200 in table sippeers read back holds it",
				pjsip300Key: "checked: PJSIPShowEndpoint 300 shows it in auth 300-auth",
			}, pass)
			set := func(rows []string, prefix string, col int, v string) []string {
				out := slices.Clone(rows)
				for i, r := range out {
					if strings.HasPrefix(r, prefix) {
						parts := strings.Split(r, "|")
						parts[col] = v
						out[i] = strings.Join(parts, "|")
					}
				}
				return out
			}
			if after := tableRows(t, su, "SELECT id, auth_type, md5_cred, password, realm, username FROM ps_auths ORDER BY id"); !slices.Equal(after, set(auths, "300-auth|", 3, applied["PJSIP/300"])) {
				t.Errorf("ps_auths: %q", after)
			}
			if after := tableRows(t, su, "SELECT id, name, host, type, context, secret, md5secret FROM sippeers ORDER BY id"); !slices.Equal(after, set(peers, "1|200|", 5, applied["SIP/200"])) {
				t.Errorf("sippeers: %q", after)
			}
			wantExpired := []string(nil)
			if tc.cache != "" {
				wantExpired = []string{tc.cache + "/300-auth"}
			}
			if got := h.srv.Expired(); !slices.Equal(got, wantExpired) {
				t.Errorf("expired from the cache: %q, want %q", got, wantExpired)
			}
		})
	}
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
