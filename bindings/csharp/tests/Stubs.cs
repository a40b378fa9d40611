namespace Org.M2mpsk.Tests {
  public static class OpensslTests {}
  public static class DtlsTests {}
}
