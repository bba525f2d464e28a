package notify

import (
	"os"
	"testing"
)

// The servers the tests share (Alertmanager, the SMTP server) start at
// their first use and stop here.
func TestMain(m *testing.M) {
	code := m.Run()
	stopAlertmanager()
	stopSMTP()
	os.Exit(code)
}
