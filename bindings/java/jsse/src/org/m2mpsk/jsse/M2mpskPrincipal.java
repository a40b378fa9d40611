package org.m2mpsk.jsse;

import java.security.Principal;
import java.util.Objects;

/**
 * The oneM2M identity a session is bound to, as
 * {@link javax.net.ssl.SSLSession#getPeerPrincipal()} and
 * {@code getLocalPrincipal()} return it: a CSE-ID, an AE-ID, or a
 * Credential-ID {@code "12-<KpsaID>"} ({@link #isCredential()}).
 */
public final class M2mpskPrincipal implements Principal {
  private final String name;
  private final boolean credential;

  M2mpskPrincipal(String name, boolean credential) {
    this.name = Objects.requireNonNull(name);
    this.credential = credential;
  }

  /** The identifier, e.g. "//m2m.example.com/cse-in" or "12-ae1@m2m.example.com". */
  @Override
  public String getName() {
    return name;
  }

  /** True when the name is a Credential-ID ("12-&lt;KpsaID&gt;"). */
  public boolean isCredential() {
    return credential;
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof M2mpskPrincipal && ((M2mpskPrincipal) o).name.equals(name)
        && ((M2mpskPrincipal) o).credential == credential;
  }

  @Override
  public int hashCode() {
    return name.hashCode();
  }

  @Override
  public String toString() {
    return name;
  }
}
