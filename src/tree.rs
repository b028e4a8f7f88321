pub fn start(config: chorus_core::config::Config) {
    crate::gateway::acceptor(config)
}
