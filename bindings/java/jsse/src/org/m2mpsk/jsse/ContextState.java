package org.m2mpsk.jsse;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import javax.net.ssl.SSLException;
import javax.net.ssl.SSLHandshakeException;
import org.m2mpsk.Config;

/**
 * What an initialised context shares among its engines: the parameters, the
 * keystore, and one config per enabled suite list (engines enabling the
 * same suites share a config, and with it its rate limiter, handshake limit
 * and event queue).
 */
final class ContextState {
  final M2mpskParameters params;
  final boolean dtls;
  private final Config defaultConfig;
  private final List<String> defaultSuites;
  private final List<String> supportedSuites;
  private final ConcurrentHashMap<String, Config> configs = new ConcurrentHashMap<>();

  ContextState(M2mpskParameters params, boolean dtls) throws SSLException {
    if (params.keystore() == null) {
      throw new IllegalArgumentException("M2mpskParameters without a keystore");
    }
    this.params = params;
    this.dtls = dtls;
    this.defaultConfig = Native.newConfig(params, null);
    this.defaultSuites = Native.configSuites(defaultConfig, dtls);
    this.supportedSuites = Native.supportedSuites();
  }

  /** The config of the engines enabling the default suites, whose cookie
   * secret a {@link M2mpskDtlsListener} answers with. */
  Config defaultConfig() {
    return defaultConfig;
  }

  List<String> defaultSuites() {
    return defaultSuites;
  }

  List<String> supportedSuites() {
    return supportedSuites;
  }

  /** "TLSv1.2", or "DTLSv1.2" for a DTLS context: the one protocol of its
   * engines and sockets. */
  String protocol() {
    return dtls ? "DTLSv1.2" : "TLSv1.2";
  }

  /** The suites as an engine enables them, in order without repeats.
   * Throws IllegalArgumentException for null or a suite not supported. */
  String[] checkSuites(String[] suites) {
    if (suites == null) throw new IllegalArgumentException("null suites");
    List<String> out = new ArrayList<>();
    for (String s : suites) {
      if (s == null || !supportedSuites.contains(s)) {
        throw new IllegalArgumentException("unsupported cipher suite: " + s);
      }
      if (!out.contains(s)) out.add(s);
    }
    return out.toArray(new String[0]);
  }

  /** The protocols as an engine enables them: none, or protocol().
   * Throws IllegalArgumentException for null or any other protocol. */
  String[] checkProtocols(String[] protocols) {
    if (protocols == null) throw new IllegalArgumentException("null protocols");
    for (String p : protocols) {
      if (!protocol().equals(p)) throw new IllegalArgumentException("unsupported protocol: " + p);
    }
    return protocols.length == 0 ? new String[0] : new String[] {protocol()};
  }

  /** A new association for an engine; mtu 0 is the parameters' (DTLS). */
  Native open(boolean client, List<String> suites, int mtu) throws SSLException {
    if (suites.isEmpty()) {
      throw new SSLHandshakeException("no cipher suite is enabled");
    }
    Config c = defaultConfig;
    if (!suites.equals(defaultSuites)) {
      String key = String.join(":", suites);
      c = configs.get(key);
      if (c == null) {
        Config made = Native.newConfig(params, key);
        c = configs.putIfAbsent(key, made);
        if (c == null) c = made;
        else Native.closeConfig(made);
      }
    }
    if (client && params.kpsaId() == null) {
      throw new SSLHandshakeException("client mode needs M2mpskParameters.kpsaId()");
    }
    return Native.open(client, dtls, c, params.keystore(), params.kpsaId(),
        mtu > 0 ? mtu : params.mtu());
  }
}
