package notify

func stopSMTP() {}
