package setup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/actiontest"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/action/secret/sqlstore"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
)

const freepbxConf = `<?php
$amp_conf['AMPDBUSER'] = 'freepbxuser';
$amp_conf['AMPDBPASS'] = 'Hunter2pass';
$amp_conf['AMPDBHOST'] = 'localhost';
$amp_conf['AMPDBSOCK'] = '/var/lib/mysql/mysql.sock';
$amp_conf['AMPDBNAME'] = 'asterisk';
require_once('/var/www/html/admin/bootstrap.php');
`

func write(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// secrets returns the defaults with FreePBX's settings file at conf.
func secrets(conf string) config.Secrets {
	s := config.Default().Secrets
	s.FreePBX.Conf = conf
	return s
}

// auto picks FreePBX on a FreePBX box, else the files, with the realtime
// tables beside them when a DSN is set; each choice says why and builds
// the store it names.
func TestChooseAuto(t *testing.T) {
	dir := t.TempDir()
	none := filepath.Join(dir, "none.conf")
	a := &actiontest.Doer{}

	c := Choose(secrets(none))
	if c.Store != secret.StoreFiles || c.Err != nil || c.Database != "" ||
		c.Why != "auto: no "+none+" and no secrets.realtime.dsn: sip.conf and pjsip.conf, changed over AMI (UpdateConfig); an extension without its section there is refused" {
		t.Errorf("no FreePBX, no DSN: %+v", c)
	}
	if st, _, err := c.Build(a); err != nil || st != (secret.ConfigFiles{AMI: a}) {
		t.Errorf("built %T, %v", st, err)
	}

	s := secrets(none)
	s.Realtime.DSN = "postgres://astguard@127.0.0.1:5432/asterisk?sslmode=disable"
	c = Choose(s)
	if c.Store != FilesAndRealtime || c.Err != nil || c.Database != "postgres astguard@127.0.0.1:5432/asterisk" ||
		!strings.Contains(c.Why, "for an extension whose section is there, the tables ps_auths and sippeers for the others") {
		t.Errorf("a realtime DSN: %+v", c)
	}
	st, closeDB, err := c.Build(a)
	if au, ok := st.(secret.Auto); err != nil || !ok || au.Files.AMI != a {
		t.Errorf("built %T, %v", st, err)
	} else if rt, ok := au.Realtime.(*sqlstore.Realtime); !ok || rt.Auths != "ps_auths" || rt.Peers != "sippeers" || rt.AMI != a {
		t.Errorf("realtime store %+v", au.Realtime)
	}
	if err := closeDB(); err != nil {
		t.Error(err)
	}

	conf := write(t, filepath.Join(dir, "freepbx.conf"), freepbxConf)
	s = secrets(conf)
	s.Realtime.DSN = "mysql://astguard@db/asterisk" // FreePBX wins
	c = Choose(s)
	if c.Store != secret.StoreFreePBX || c.Err != nil || c.ReloadTimeout != 120*time.Second ||
		c.Database != "mysql freepbxuser@unix(/var/lib/mysql/mysql.sock)/asterisk (from "+conf+")" ||
		c.Why != "auto: "+conf+" exists, a FreePBX box, whose Apply Config writes sip.conf and pjsip.conf from its database: FreePBX's database, then `fwconsole reload` (at most 2m)" {
		t.Errorf("FreePBX: %+v", c)
	}
	st, closeDB, err = c.Build(a)
	if f, ok := st.(*sqlstore.FreePBX); err != nil || !ok || f.AMI != a || f.Reload.String() != "fwconsole reload" {
		t.Errorf("built %T %+v, %v", st, st, err)
	}
	closeDB()
	if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, "Hunter2pass") {
		t.Errorf("printing the choice shows the password: %s", s)
	}
}

// A store that cannot be used: the choice says why, and every rotation
// fails with that reason, saying where the old secret stands; nothing is
// generated.
func TestChooseUnusable(t *testing.T) {
	dir := t.TempDir()
	conf := write(t, filepath.Join(dir, "freepbx.conf"), "<?php\n$amp_conf['AMPDBUSER'] = 'u';\n$amp_conf['AMPDBPASS'] = getenv('P');\n")
	c := Choose(secrets(conf))
	want := "FreePBX's settings: " + conf + ": $amp_conf['AMPDBPASS'] is not a plain string (the guard does not run PHP): give the database in secrets.freepbx.dsn and password_file"
	if c.Store != secret.StoreFreePBX || c.Err == nil || c.Err.Error() != want {
		t.Fatalf("choice %+v\nwant the error %q", c, want)
	}
	st, _, err := c.Build(&actiontest.Doer{})
	if err != nil {
		t.Fatal(err)
	}
	generated := false
	res := secret.Rotator{Store: st, Generate: func() (string, error) { generated = true; return "x", nil }}.
		Rotate(t.Context(), ami.Extension{Tech: ami.TechSIP, Name: "200"}, nil, secret.Settings{Retry: action.Backoff{Attempts: 3}})
	if res.Result != action.Failed || res.Retryable || generated || res.Err.Error() != want ||
		!strings.Contains(res.Detail, "nothing was changed: the old secret is still in use; by hand: fix [secrets]") {
		t.Errorf("rotation %+v", res)
	}

	// A password file that is not there.
	s := secrets(filepath.Join(dir, "none"))
	s.Store, s.Realtime.DSN, s.Realtime.PasswordFile = config.StoreRealtime, "mysql://a@db/asterisk", filepath.Join(dir, "missing")
	if c := Choose(s); c.Err == nil || !errors.Is(c.Err, os.ErrNotExist) || !strings.HasPrefix(c.Err.Error(), "the password of secrets.realtime.dsn: ") {
		t.Errorf("a missing password file: %+v", c)
	}
}

// Explicit stores: the files even on a FreePBX box (said to be undone
// there), FreePBX with a user of the guard's own, its password from the
// environment over the file.
func TestChooseExplicit(t *testing.T) {
	dir := t.TempDir()
	conf := write(t, filepath.Join(dir, "freepbx.conf"), freepbxConf)
	s := secrets(conf)
	s.Store = config.StoreFiles
	if c := Choose(s); c.Store != secret.StoreFiles || !strings.HasSuffix(c.Why, "; but "+conf+" exists: FreePBX writes those files from its database and puts the old secret back at its next Apply Config") {
		t.Errorf("files on FreePBX: %+v", c)
	}

	s = secrets(filepath.Join(dir, "none"))
	s.Store = config.StoreFreePBX
	s.FreePBX.DSN = "mysql://astguard@localhost/asterisk?socket=/run/mysqld/mysqld.sock"
	s.FreePBX.PasswordFile = write(t, filepath.Join(dir, "pw"), "FromTheFile\n")
	c := Choose(s)
	if c.Err != nil || c.Database != "mysql astguard@unix(/run/mysqld/mysqld.sock)/asterisk (secrets.freepbx.dsn)" || *c.password != "FromTheFile" {
		t.Errorf("FreePBX with a DSN: %+v", c)
	}
	t.Setenv(config.FreePBXPasswordEnv, "FromTheEnvironment")
	if c := Choose(s); c.Err != nil || *c.password != "FromTheEnvironment" {
		t.Errorf("the environment should win: %v", c.Err)
	}
}
