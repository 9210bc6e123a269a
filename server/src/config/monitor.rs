//! Model monitoring's flags, read into the services' `MonitorConfig`.

use std::time::Duration;

use super::ServeArgs;

/// Monitoring's settings, or None when `--monitor false`.
pub(super) fn monitor(
    args: &ServeArgs,
    file: &ServeArgs,
) -> Result<Option<mercator_services::monitor::MonitorConfig>, String> {
    use mercator_services::monitor::{MonitorConfig, Window};
    if !args.monitor.or(file.monitor).unwrap_or(true) {
        return Ok(None);
    }
    let d = MonitorConfig::default();
    let windows = match args
        .monitor_windows
        .as_ref()
        .or(file.monitor_windows.as_ref())
    {
        Some(text) => text
            .split(',')
            .map(Window::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--monitor-windows: {e}"))?,
        None => d.windows,
    };
    let threshold = |flag: &str, v: Option<f64>, default: f64| match v {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => Err(format!("{flag}: {v} is not a positive number")),
        None => Ok(default),
    };
    Ok(Some(MonitorConfig {
        bucket: args
            .monitor_bucket_secs
            .or(file.monitor_bucket_secs)
            .map(|s| Duration::from_secs(s.clamp(1, 86_400)))
            .unwrap_or(d.bucket),
        windows,
        flush: args
            .monitor_flush_secs
            .or(file.monitor_flush_secs)
            .map(|s| Duration::from_secs(s.clamp(1, 3600)))
            .unwrap_or(d.flush),
        thresholds: mercator_features::drift::Thresholds {
            psi: threshold(
                "--monitor-psi-threshold",
                args.monitor_psi_threshold.or(file.monitor_psi_threshold),
                d.thresholds.psi,
            )?,
            js: threshold(
                "--monitor-js-threshold",
                args.monitor_js_threshold.or(file.monitor_js_threshold),
                d.thresholds.js,
            )?,
            min_rows: args
                .monitor_min_rows
                .or(file.monitor_min_rows)
                .unwrap_or(d.thresholds.min_rows)
                .max(1),
        },
        keep_extra: d.keep_extra,
        log_sample: match args.monitor_log_sample.or(file.monitor_log_sample) {
            Some(v) if (0.0..=1.0).contains(&v) => v,
            Some(v) => return Err(format!("--monitor-log-sample: {v} is not between 0 and 1")),
            None => d.log_sample,
        },
        log_channel: args
            .monitor_log_channel_rows
            .or(file.monitor_log_channel_rows)
            .unwrap_or(d.log_channel)
            .clamp(1, 1 << 24),
        label_days: args
            .monitor_label_days
            .or(file.monitor_label_days)
            .unwrap_or(d.label_days)
            .clamp(1, 366),
        log_retention: args
            .monitor_log_retention_days
            .or(file.monitor_log_retention_days)
            .map(|days| Duration::from_secs(u64::from(days.clamp(1, 36_500)) * 86_400))
            .unwrap_or(d.log_retention),
        accuracy_max_rows: args
            .monitor_accuracy_max_rows
            .or(file.monitor_accuracy_max_rows)
            .unwrap_or(d.accuracy_max_rows)
            .clamp(1, 10_000_000),
    }))
}
