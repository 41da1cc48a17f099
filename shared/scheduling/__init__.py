"""The scheduling library: the cluster view, in-flight accounting, the plugin pipeline and
the decision core. The scheduler service serves it over NATS; the API runs it in-process for
the gateway's local routing mode."""
