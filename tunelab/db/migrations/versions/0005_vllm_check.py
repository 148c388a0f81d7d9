"""Model versions keep the vLLM verdict of their adapter, checked at registration

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing versions stay NULL: the verdict is read from the adapter in the artifact store,
    # which a migration may not reach (a remote store); the first view checks and stores it.
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("vllm_check", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("vllm_check")
