package runner

import (
	"context"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// heartbeat refreshes this runner's RunnerRecord in etcd, so operators see
// which runners are alive and what they consume. It also feeds the systemd
// watchdog while the runner is ready, so a wedged runner is restarted.
func (r *Runner) heartbeat(ctx context.Context) {
	every := r.cfg.Heartbeat
	wd, _ := daemon.SdWatchdogEnabled(false)
	if wd > 0 && (every <= 0 || wd/2 < every) {
		every = wd / 2
	}
	if every <= 0 {
		return
	}
	host, _ := os.Hostname()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if r.cfg.Heartbeat > 0 {
			rec := &secrets.RunnerRecord{ID: r.cfg.RunnerID, Host: host, Version: r.version,
				Queues: r.queues.all(), LastHeartbeat: time.Now().UTC(), Instance: r.jobs.Owner}
			if _, err := r.store.Put(ctx, rec, driver.PutOptions{}); err != nil && ctx.Err() == nil {
				r.log.Warn("runner heartbeat failed", "error", err)
			}
		}
		if wd > 0 && r.notReady() == "" {
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// NotifySystemd tells systemd (Type=notify) the runner is ready once it
// consumes, and that it is stopping when ctx ends. Without NOTIFY_SOCKET it
// does nothing. It returns when ctx ends.
func (r *Runner) NotifySystemd(ctx context.Context) {
	select {
	case <-r.ready:
		_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	case <-ctx.Done():
	}
	<-ctx.Done()
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
}
