package main

import (
	"os"
	"testing"

	"github.com/astguard/astguard/internal/testenv"
)

// The parallel tests here wait on a demo replayed in real time or on a
// child process, not on the CPU: they all run at once.
func TestMain(m *testing.M) {
	testenv.RaiseParallel(6)
	os.Exit(m.Run())
}
